"""wanvideo_vae: an exact, memory-bounded native decoder for the Wan 2.1 video VAE.

    import wanvideo_vae
    weights = wanvideo_vae.load_weights("Wan2_1_VAE_bf16.safetensors")
    frames = wanvideo_vae.decode_tiled(weights, latents)   # [F, H, W, 3] float32 in [0, 1]
"""
import os as _os

import scipy_openblas32 as _openblas  # noqa: F401  (loads the BLAS the extension links against)

try:
    from . import _C
except ImportError:
    import importlib.machinery as _machinery

    _here = _os.path.dirname(__file__)
    if any(_os.path.exists(_os.path.join(_here, "_C" + suffix)) for suffix in _machinery.EXTENSION_SUFFIXES):
        raise  # built, but it does not load: its own error says why
    # Python imports the sources first from the folder it runs in: `python -m wanvideo_vae` in the
    # repository's root finds this unbuilt copy rather than the installed package
    raise ImportError(f"wanvideo_vae: the compiled module _C is not in {_here}, an unbuilt source folder (run from "
                      "another folder to use the installed package, or build it here: pip install -e .)") from None
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
