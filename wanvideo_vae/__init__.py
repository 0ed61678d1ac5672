"""wanvideo_vae: an exact, memory-bounded native decoder for the Wan 2.1 video VAE.

    import wanvideo_vae
    weights = wanvideo_vae.load_weights("Wan2_1_VAE_bf16.safetensors")
    frames = wanvideo_vae.decode_tiled(weights, latents)   # [F, H, W, 3] float32 in [0, 1]
"""
import os as _os

import scipy_openblas32 as _openblas  # noqa: F401  (loads the BLAS the extension links against)

from . import _C
from ._C import DecodeInterrupted, DeviceMemoryError, WanVAEError
from .api import WAN21_MEAN, WAN21_STD, Decoder, backends, decode_tiled
from .comfy_nodes import native_wan_vae
from .weights import bf16_to_float32, load_weights, normalize_keys

__all__ = [
    "Decoder",
    "DecodeInterrupted",
    "DeviceMemoryError",
    "WAN21_MEAN",
    "WAN21_STD",
    "WanVAEError",
    "backends",
    "bf16_to_float32",
    "decode_tiled",
    "load_weights",
    "native_wan_vae",
    "normalize_keys",
]
__version__ = "0.1.0"

if hasattr(_os, "register_at_fork"):  # a Decoder busy in a forked parent's thread is an error in the child, not a hang
    _os.register_at_fork(after_in_child=_C._after_fork)
