"""Test helpers: fixtures, seeded random decoders, a tiny safetensors writer."""
import importlib.util
import json
import os
import shutil
import struct
import types

import numpy as np

from wanvideo_vae.random_model import random_latents, random_weights  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def package_root():
    """The folder holding the wanvideo_vae this process imported (built in place, installed, or the
    copy beside a stub-built _cuda): what a test's subprocess must put first on its PYTHONPATH."""
    import wanvideo_vae
    return os.path.dirname(os.path.dirname(os.path.abspath(wanvideo_vae.__file__)))


def scratch_copy(tmp_path, folders=()):
    """A copy of the sources a build needs (and `folders`, relative to the repository), without built
    modules or build records, in tmp_path/src."""
    src = tmp_path / "src"
    for name in ("csrc", "cuda", "wanvideo_vae", *folders):
        shutil.copytree(os.path.join(REPO, name), src / name,
                        ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "_build_info.py"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    return src


def load_setup_script(name="wanvideo_vae_setup"):
    """setup.py as a module (its setup() runs only as __main__); it lists csrc/ when loaded, so the working
    folder must be the repository."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "setup.py"))
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    return setup


def load_install_script():
    """install.py as a module (importing it runs nothing)."""
    spec = importlib.util.spec_from_file_location("wanvideo_vae_install", os.path.join(REPO, "install.py"))
    install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install)
    return install


SHARED = os.environ.get("WANVIDEO_SHARED", os.path.join(REPO, "..", "shared"))
FIXTURES = os.path.join(SHARED, "fixtures")


def load_fixture(name):
    d = np.load(os.path.join(FIXTURES, f"wan21_{name}.npz"))
    weights = {k[len("weights/"):]: d[k] for k in d.files if k.startswith("weights/")}
    return weights, {k: d[k] for k in d.files if not k.startswith("weights/")}


def random_stats(z_dim, seed=0):
    rng = np.random.default_rng(seed + 1000)
    return (0.5 * rng.standard_normal(z_dim)).astype(np.float32), (1.0 + rng.random(z_dim)).astype(np.float32)


def causal_conv_weights(weights):
    """{checkpoint name without ".weight": weight} of the causal convolutions (a temporal extent over 1)."""
    return {k[:-len(".weight")]: w for k, w in weights.items()
            if k.endswith(".weight") and w.ndim == 5 and w.shape[2] > 1}


def to_unit(raw):
    """The default output mapping: clamp(-1, 1), then (x + 1) / 2."""
    return (np.clip(raw, -1.0, 1.0) + 1.0) / 2.0


_ST_NAMES = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("V2"): "BF16", np.dtype("<i8"): "I64"}


def write_safetensors(path, tensors):
    """Writes {name: ndarray} (float32, float16, raw bf16 as "V2", int64) in the safetensors format."""
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        data = arr.tobytes()
        header[name] = {"dtype": _ST_NAMES[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for b in blobs:
            f.write(b)


def stand_in_cuda_backend(monkeypatch, capability, current=0):
    """The CUDA backend as wanvideo_vae.devices sees it, with no GPU: `current` the current device,
    capability(index) each device's compute capability (torch not asked). Returns the indices asked."""
    from wanvideo_vae import devices
    asked = []

    def device_info(index):
        asked.append(index)
        return {"capability": capability(index)}

    backend = types.SimpleNamespace(current_device=lambda: current, device_info=device_info)
    monkeypatch.setattr(devices, "cuda_module", lambda: backend)
    monkeypatch.setattr(devices, "_torch_if_loaded", lambda: None)
    return asked
