"""Seeded random Wan 2.1 decoder weights: the embedded default when no checkpoint is given."""
import numpy as np

from . import _C


def random_weights(dim=96, z_dim=16, seed=0):
    """{key: float32 array} for every decoder key: convs ~ N(0, 1/fan_in), small biases, gammas near 1.
    dim=96, z_dim=16 is the full-size Wan 2.1 decoder (73.3 M parameters)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in _C.expected_keys(dim, z_dim):
        if key.endswith("gamma"):
            a = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
        elif key.endswith("bias"):
            a = 0.05 * rng.standard_normal(shape, dtype=np.float32)
        else:
            a = rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(np.prod(shape[1:])))
        out[key] = a.astype(np.float32)
    return out


def random_latents(z_dim=16, T=3, h=16, w=16, seed=0):
    return np.random.default_rng(seed + 2000).standard_normal((z_dim, T, h, w), dtype=np.float32)
