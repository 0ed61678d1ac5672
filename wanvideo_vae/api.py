"""Public API: decode_tiled(), Decoder, backends()."""
import contextlib
import importlib.util
import math
import numbers
import re
import threading

import numpy as np
import scipy_openblas32 as _openblas

from . import _C
from ._C import WanVAEError
from .arrays import PRECISIONS, as_float_list, host_array, is_cuda_tensor, latents_4d
from .devices import (DEVICE_BUDGET_SHARE, CudaArray, cuda_module, device_budget, device_index,
                      release_torch_cache_if_needed, resolve_device)
from .sysmem import available_host_bytes
from .tracebacks import keeps_nothing_on_error
from .weights import given_names, is_wan22_layout, normalize_keys

# Share of the available host memory a CPU decode plans to use when no max_memory is given.
HOST_BUDGET_SHARE = 0.9

# Wan 2.1 latent statistics: latents arrive normalized, the decoder starts with z * std + mean.
WAN21_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
              0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
WAN21_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
             3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]


NORMALIZATIONS = ("default", "minmax", "none")

BACKENDS = ("cpu", "cuda")

# WanVideoDecode's tiling defaults, which every entry point keeps: tile size (px, halo included) and
# the strides its blended tiles overlap by (exact tiles need no overlap: accepted, not used).
TILE, TILE_STRIDE_X, TILE_STRIDE_Y = 272, 144, 128


OUTPUT_DTYPES = ("float32", "uint8")


def wants_uint8(dtype, raw=False):
    """decode's dtype: float32 (None: the default) or uint8, the [0, 1] image as 0..255 (x * 255 + 0.5
    truncated, as media.to_uint8 makes it of the float32 frames); raw values are float32 only. NumPy's
    types, their names, or torch's (torch.uint8)."""
    # torch.uint8 -> "uint8"; bfloat16 and the like are refused below
    given = str(dtype).rpartition(".")[2] if type(dtype).__module__ == "torch" else dtype
    try:
        name = np.dtype(np.float32 if given is None else given).name
    except (TypeError, ValueError):  # what NumPy does not take for a type
        name = None
    if name not in OUTPUT_DTYPES:
        raise WanVAEError(f"dtype must be float32 or uint8 (the frames' type), got {dtype!r}")
    if name == "uint8" and raw:
        raise WanVAEError("raw=True returns the unclamped decode, which only float32 holds; dtype=uint8 is the "
                          "clamped image")
    return name == "uint8"


def check_normalization(mode):
    if not isinstance(mode, str) or mode not in NORMALIZATIONS:
        raise WanVAEError(f"normalization must be one of {NORMALIZATIONS}, got {mode!r}")


def normalize_frames(raw, mode="default", inplace=False):
    """WanVideoDecode's normalizations of a raw decode: default = clamp(-1, 1) then (x + 1) / 2;
    minmax = rescale by the global min and max; none = the raw values. inplace=True rewrites `raw`
    (a float array) and returns it: a long video's frames are GiBs, and each copy would be as large."""
    check_normalization(mode)
    out = raw if inplace else np.array(raw, dtype=np.result_type(raw, np.float32))
    if mode == "minmax":
        lo, hi = float(out.min()), float(out.max())
        if hi > lo:
            out -= lo
            out /= hi - lo
        else:
            out[...] = 0.0
    elif mode == "default":
        np.clip(out, -1.0, 1.0, out=out)
        out += 1.0
        out /= 2.0
    return out


def backends():
    """{"cpu": {...}, "cuda": {...}}: for each backend whether it was compiled, loads, and is usable
    now (a device is present), the reason when not, its precisions and the ops it implements; for
    the CPU also the threads a decode splits its work over and the BLAS (OpenBLAS's description: the
    core type whose kernels it runs); for CUDA also the build's warnings (CUDA versions that differ
    from PyTorch's)."""
    cuda_module()  # first: _C.backend_features imports _cuda, which on Windows needs the DLL folders added
    feats = _C.backend_features()
    # threads 0: WANVIDEO_CPU_THREADS is not a count, and Decoders refuse it (reason)
    feats["cpu"].update(compiled=True, usable=feats["cpu"]["threads"] > 0, blas=_openblas_config())
    cuda = feats["cuda"]
    cuda["compiled"] = importlib.util.find_spec("wanvideo_vae._cuda") is not None
    cuda["build_warnings"] = _cuda_build_warnings()
    mod = cuda_module() if cuda["loaded"] else None
    if mod is None:
        cuda.update(usable=False, devices=0, precisions=[])
        cuda["reason"] = "not built: " + _cuda_not_built() if not cuda["compiled"] else _load_failure(cuda["reason"])
        return feats
    count, why = mod.device_count()
    cuda.update(usable=count > 0, devices=count, reason=why, versions=mod.versions())
    return feats


def _openblas_config():
    """OpenBLAS's own description, with the core type whose kernels it runs ("OpenBLAS 0.3.34.481.3
    DYNAMIC_ARCH NO_AFFINITY SkylakeX MAX_THREADS=64": its AVX-512 kernels; OPENBLAS_CORETYPE chooses
    others), or why it is not known."""
    try:
        return _openblas.get_openblas_config()
    except Exception as e:  # noqa: BLE001 - a description: never a failure of backends()
        return f"unknown ({type(e).__name__}: {e})"


# The libraries the CUDA backend loads, by a word of the loader's message, and the wheel that has each.
_LIBRARY_WHEELS = (("cudnn", "nvidia-cudnn-cu13 (nvidia-cudnn-cu12 for a CUDA 12 build)"),
                   ("cublas.so.12", "nvidia-cublas-cu12"), ("cublas64_12", "nvidia-cublas-cu12"),
                   ("cublas", "nvidia-cublas"))


def _load_failure(reason):
    """Why wanvideo_vae._cuda did not load (the loader's words), with the wheel that provides a library
    it did not find."""
    reason = reason.replace(" (see wanvideo_vae.backends())", "")
    if "cannot open shared object file" not in reason and "could not be found" not in reason:
        return reason  # not a library missing (Windows' message names none)
    for word, wheel in _LIBRARY_WHEELS:
        if word in reason.lower():
            return f"{reason}: PyTorch's CUDA builds install it, or pip install {wheel}"
    return (f"{reason}: the backend needs cuDNN 9 and cuBLAS, which PyTorch's CUDA builds install (or pip install "
            "nvidia-cudnn-cu13 nvidia-cublas)")


def _cuda_not_built():
    """Why the build left the CUDA backend out, as setup.py recorded it."""
    try:
        from ._build_info import CUDA_NOT_BUILT
    except ImportError:  # a copy built by other means
        return "nvcc, cuDNN or cuBLAS was missing when the package was built"
    return CUDA_NOT_BUILT or "its module is missing from this installation"


def _cuda_build_warnings():
    """What setup.py found that may keep the CUDA backend from running where PyTorch does (a
    toolkit, cuDNN or cuBLAS of another CUDA version than PyTorch's)."""
    try:
        from ._build_info import CUDA_BUILD_WARNINGS
    except ImportError:  # a copy built by other means, or by an older setup.py
        return []
    return list(CUDA_BUILD_WARNINGS)


def _is_int(v):
    """A Python or NumPy integer (np.int64 from an array's shape, say), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _check_tiling(tile_x, tile_y, tile_stride_x, tile_stride_y):
    for name, v in (("tile_x", tile_x), ("tile_y", tile_y), ("tile_stride_x", tile_stride_x),
                    ("tile_stride_y", tile_stride_y)):
        if not _is_int(v) or not 0 < v < 2**31:
            raise WanVAEError(f"{name} must be a positive int (below 2**31), got {v!r}")
    if tile_x <= tile_stride_x or tile_y <= tile_stride_y:
        raise WanVAEError(f"tile size must exceed the tile stride: got tile_x={tile_x}, tile_stride_x={tile_stride_x}, "
                          f"tile_y={tile_y}, tile_stride_y={tile_stride_y} (WanVideoDecode's rule; strides change "
                          "nothing in an exact decode: with small tiles pass small strides, e.g. 8)")


def _budget(max_memory, backend="cpu", device=-1):
    """Bytes the decode's arena may use: the caller's, else a share of the available host memory
    (CPU) or of the free device memory (CUDA)."""
    if max_memory is None:
        if backend == "cuda":
            return device_budget(device)[0]
        available = available_host_bytes()
        if available is None:
            return 0  # unknown: no limit
        return max(int(available * HOST_BUDGET_SHARE), 1)  # none left (a container at its limit) is not "no limit"
    real = isinstance(max_memory, numbers.Real) and not isinstance(max_memory, (bool, np.bool_))
    # 4.5 * 2**30, 8e9: whole, though floats (int() == the value: nothing cut off)
    whole = _is_int(max_memory) or (real and math.isfinite(max_memory) and int(max_memory) == max_memory)
    if not whole or not 0 < int(max_memory) < 2**63:
        raise WanVAEError(f"max_memory must be a whole number of bytes from 1 to 2**63 - 1, or None; got "
                          f"{max_memory!r}")
    return int(max_memory)


def _memory_advice(message, max_memory, backend):
    """What to do about a MemoryError of planning or decoding (its message), or None: the budget's
    source where no tiling fits it, a smaller budget where the working memory could not be had."""
    if message.startswith("the decode needs "):
        if max_memory is not None:
            least = re.search(r"the least it can take is (\d+) bytes", message)
            return f". Pass max_memory={least.group(1)} or more." if least else None
        if backend == "cuda":
            return (f". The budget is {DEVICE_BUDGET_SHARE:.0%} of the GPU memory free as the decode begins: unload "
                    "other models or close programs using the GPU to free more.")
        return (f". The budget is {HOST_BUDGET_SHARE:.0%} of the host memory available as the decode begins: close "
                "programs to free more.")
    if message.startswith("the decode's working memory: "):
        return ". Smaller tiles take less: a smaller memory budget or tile size (the frames are the same)."
    return None


@contextlib.contextmanager
def _memory_advised(max_memory, backend):
    """MemoryError (DeviceMemoryError too) raised inside, with _memory_advice added to its message."""
    try:
        yield
    except MemoryError as e:
        advice = _memory_advice(str(e), max_memory, backend)
        if advice is None:
            raise
        raise type(e)(f"{e}{advice}") from None


def _naming_the_given(error, given):
    """A weight's error naming the weight as the caller gave it, where its message names it otherwise (its
    checkpoint name): `given` maps the one to the other (weights.given_names). None where it does not."""
    m = re.search(r"'([^']*)'", str(error))
    if m is None or m.group(1) not in given:
        return None
    return type(error)(f"{error} (given as '{given[m.group(1)]}')")


class Decoder:
    """A Wan 2.1 VAE decoder with converted weights, reusable across calls.

    weights: {checkpoint key: array or tensor}, with or without the 'model.' prefix, or as diffusers'
    AutoencoderKLWan names them; encoder keys are ignored. mean/std: latent statistics (default:
    Wan 2.1's, for z_dim 16).
    backend: 'cpu' (float32, the reference) or 'cuda'; precision (CUDA): 'bf16' (default), 'fp16' or
    'fp32' for activations and weights, always accumulating in float32; device (CUDA): an index,
    'cuda:N' or a torch.device, default the current device. A Decoder decodes one call at a time;
    concurrent calls on one Decoder wait for each other.

    Its weights (and, on CUDA, library handles and up to WANVIDEO_CUDA_KEEP_PINNED_MIB of pinned
    host memory) live until close(), or until the Decoder is garbage; `with Decoder(...) as dec:`
    closes it on leaving. last_stats: the plan, times and memory of the calling thread's last decode
    (where threads share a Decoder, each sees its own; a thread that made none, the last of any)."""

    @keeps_nothing_on_error
    def __init__(self, weights, *, backend="cpu", precision=None, device=None, mean=None, std=None):
        if not isinstance(weights, dict):
            raise WanVAEError("weights must be a dict of checkpoint key -> array")
        if backend not in BACKENDS:
            raise WanVAEError(f"backend must be 'cpu' or 'cuda', got {backend!r}")
        if precision is not None and not isinstance(precision, str):
            raise WanVAEError(f"precision must be one of {PRECISIONS} or None, got {precision!r}")
        if backend == "cpu" and device is not None and str(device).lower() not in ("cpu", "cpu:0"):
            raise WanVAEError(f"device={device!r} is for the CUDA backend: pass backend='cuda' (the CPU backend "
                              "runs on the host)")
        self._device = resolve_device(device_index(device)) if backend == "cuda" else -1
        if backend == "cuda":
            cuda_module()  # on Windows: the DLL folders, before _C imports the backend
        decoder_weights = normalize_keys(weights)
        if is_wan22_layout(decoder_weights):
            raise WanVAEError("these weights have the Wan 2.2 VAE's layout (the Wan 2.2 TI2V-5B model's VAE); this "
                              "decoder decodes the Wan 2.1 VAE only (which the Wan 2.2 14B models use)")
        if weights and not decoder_weights:
            first = next(iter(weights))
            which = (f"the only weight, {first!r}, is not" if len(weights) == 1 else
                     f"none of the {len(weights)} weights is")
            raise WanVAEError(f"{which} the decoder's (the decoder's keys start with 'decoder.' or 'conv2.', perhaps "
                              "after 'model.'; diffusers' with 'decoder.' or 'post_quant_conv.')"
                              + ("" if len(weights) == 1 else f"; the first is {first!r}"))
        try:
            host = {k: host_array(v, f"weight '{k}'") for k, v in decoder_weights.items()}
            self._model = _C.Model(host, backend, precision, self._device)
        except WanVAEError as e:
            named = _naming_the_given(e, given_names(weights))
            if named is None:
                raise
            raise named from None
        try:
            self.mean, self.std = mean, std
        except BaseException:  # freed now: the caller never gets this Decoder to close
            self._model.close()
            raise
        self._last_stats, self._thread_stats = None, threading.local()

    @property
    def last_stats(self):
        return getattr(self._thread_stats, "stats", self._last_stats)

    def close(self):
        """Frees the weights and every buffer the Decoder keeps (device memory included) now; a decode
        running in another thread finishes first. Later decodes raise WanVAEError; plan() and the
        properties still work. Closing twice is harmless."""
        self._model.close()

    @property
    def closed(self):
        return self._model.closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def mean(self):
        """The latent mean decode un-normalizes with (Wan 2.1's by default for z_dim 16); set it to a
        sequence of z_dim numbers, or None for the default."""
        return self._mean

    @mean.setter
    def mean(self, values):
        self._mean = self._stats(values, WAN21_MEAN, "mean")

    @property
    def std(self):
        """The latent std, as mean."""
        return self._std

    @std.setter
    def std(self, values):
        self._std = self._stats(values, WAN21_STD, "std")

    def _stats(self, given, default, what):
        values = as_float_list(given, what)
        if values is None:
            if self.z_dim != len(default):
                return None
            values = list(default)
        if len(values) != self.z_dim:
            raise WanVAEError(f"{what} has {len(values)} values; the weights have z_dim={self.z_dim}")
        return values

    @property
    def z_dim(self):
        return self._model.z_dim

    @property
    def dim(self):
        return self._model.dim

    @property
    def backend(self):
        return self._model.backend

    @property
    def precision(self):
        return self._model.precision

    @property
    def device(self):
        """The CUDA device index the Decoder works on (-1 on the CPU backend)."""
        return self._device

    def halos(self):
        """Halo (pixels at that block's resolution) at the input of every block after the attention."""
        return self._model.halos()

    def plan(self, T, h, w, *, tile_x=TILE, tile_y=TILE, tile_stride_x=TILE_STRIDE_X, tile_stride_y=TILE_STRIDE_Y,
             enable_vae_tiling=True, end_frame=False, max_memory=None, dtype=None):
        """The tile grid and memory plan of a decode of T latent frames of h x w, without running it; dtype
        is the frames' type the decode will ask for (its output staging is sized by it)."""
        uint8 = wants_uint8(dtype)
        for name, v in (("T", T), ("h", h), ("w", w)):
            if not _is_int(v) or not 0 < v < 2**31:
                raise WanVAEError(f"{name} must be a positive int (below 2**31), got {v!r}")
        tx, ty = self._tiles(tile_x, tile_y, tile_stride_x, tile_stride_y, enable_vae_tiling)
        budget = _budget(max_memory, self.backend, self._device)
        with _memory_advised(max_memory, self.backend):
            return self._model.plan(T, h, w, tile_x=tx, tile_y=ty, end_frame=end_frame, max_memory=budget,
                                    uint8=uint8)

    @staticmethod
    def _tiles(tile_x, tile_y, tile_stride_x, tile_stride_y, enable_vae_tiling):
        if not enable_vae_tiling:
            return 0, 0
        _check_tiling(tile_x, tile_y, tile_stride_x, tile_stride_y)
        return int(tile_x), int(tile_y)

    @keeps_nothing_on_error
    def decode(self, latents, *, tile_x=TILE, tile_y=TILE, tile_stride_x=TILE_STRIDE_X, tile_stride_y=TILE_STRIDE_Y,
               enable_vae_tiling=True, mean=None, std=None, raw=False, end_frame=False, progress=None,
               max_memory=None, profile=False, dtype=None):
        """Latents [z, T, h, w] or [1, z, T, h, w] -> frames [F, H, W, 3] float32, or uint8 (NumPy, host).

        Default output is clamp(-1, 1) then (x + 1) / 2, in [0, 1]; raw=True returns the unclamped
        decode; dtype=np.uint8 returns the [0, 1] image as uint8, 0 to 255 (x * 255 + 0.5 truncated,
        byte for byte what media.to_uint8 makes of the float32 frames), a quarter of the host memory.
        Tiling is exact: tile sizes change memory and speed, never the result; strides are validated
        for compatibility with WanVideoDecode but do not change anything.
        end_frame: decode the last latent frame as a fresh one-frame sequence (WanVideo end-image
        mode). progress(done, total) is called between chunks; returning False stops the decode.
        max_memory: bytes of working memory (the arena; weights and output excluded) the decode may
        use, by default 90% of the available host memory (CPU) or of the free device memory (CUDA);
        if the plan needs more, tiles shrink to the largest that fits (the result is the same, also
        with tiling disabled), and if no tiling fits, MemoryError says the least budget that would,
        before any work starts.
        CUDA: torch CUDA tensors are read in place (any strides, float32/float16/bfloat16), after the
        work queued on torch's current stream; host latents are copied to the device.
        profile=True waits for every backend op and puts {op: [seconds, calls, host seconds]} in
        last_stats["op_seconds"] (host seconds: the part spent in the call itself, queueing the work)
        and {convolution's checkpoint name: [seconds, calls, flops]} in last_stats["conv_seconds"]
        (slower: no overlap between ops; for finding where time goes)."""
        if self.closed:  # before any planning (which may empty torch's cache for nothing)
            raise WanVAEError("this Decoder is closed (close() freed its weights and memory); make a new Decoder")
        uint8 = wants_uint8(dtype, raw)
        mean = self._stats(mean, self.mean, "mean") if mean is not None else self.mean
        std = self._stats(std, self.std, "std") if std is not None else self.std
        if mean is None or std is None:
            raise WanVAEError(f"mean and std are required for z_dim={self.z_dim} (defaults exist only for 16)")
        tx, ty = self._tiles(tile_x, tile_y, tile_stride_x, tile_stride_y, enable_vae_tiling)
        on_device = self.backend == "cuda" and is_cuda_tensor(latents)
        if on_device:
            lat = latents_4d(CudaArray(latents, "latents"))
        else:
            lat = latents_4d(host_array(latents, "latents"))
        with _memory_advised(max_memory, self.backend):
            budget = self._decode_budget(lat, on_device, tx, ty, bool(end_frame), max_memory, uint8)
            frames, stats = self._model.decode(lat, mean, std, tile_x=tx, tile_y=ty, end_frame=bool(end_frame),
                                               raw=bool(raw), progress=progress, max_memory=budget,
                                               profile=bool(profile), uint8=uint8)
        self._last_stats = self._thread_stats.stats = stats
        return frames

    def _decode_budget(self, lat, on_device, tx, ty, end_frame, max_memory, uint8):
        """The working memory a decode of lat may plan for (see decode's max_memory); on CUDA, torch's
        unused cache is released first where the plan needs more than is free, the caller's budget too."""
        if self.backend != "cuda":
            return _budget(max_memory, self.backend, self._device)
        given = None if max_memory is None else _budget(max_memory, self.backend, self._device)
        # host latents take a float32 copy on the device beside the arena: out of the same free memory
        upload = 0 if on_device else 4 * math.prod(getattr(lat, "shape", ()))
        budget, free_now = device_budget(self._device, reserve=upload)
        budget = given or budget
        if len(getattr(lat, "shape", ())) != 4:  # a bare array interface: no plan to size here, so no cache
            return given or free_now  # released: what is free alone
        planned = self._model.plan(lat.shape[1], lat.shape[2], lat.shape[3], tile_x=tx, tile_y=ty,
                                   end_frame=end_frame, max_memory=budget, uint8=uint8)["planned_bytes"]
        released = release_torch_cache_if_needed(self._device, budget, planned, free_now, reserve=upload)
        return given or released


@keeps_nothing_on_error
def decode_tiled(weights, latents, *, tile_x=TILE, tile_y=TILE, tile_stride_x=TILE_STRIDE_X,
                 tile_stride_y=TILE_STRIDE_Y, enable_vae_tiling=True, mean=None, std=None, raw=False,
                 end_frame=False, backend="cpu", precision=None, device=None, progress=None, max_memory=None,
                 dtype=None):
    """One-shot decode: builds a Decoder from `weights` and decodes `latents`. See Decoder.decode."""
    # closed on the way out, on an error too (on CUDA its device and pinned memory)
    with Decoder(weights, backend=backend, precision=precision, device=device, mean=mean, std=std) as dec:
        return dec.decode(latents, tile_x=tile_x, tile_y=tile_y, tile_stride_x=tile_stride_x,
                          tile_stride_y=tile_stride_y, enable_vae_tiling=enable_vae_tiling, raw=raw,
                          end_frame=end_frame, progress=progress, max_memory=max_memory, dtype=dtype)
