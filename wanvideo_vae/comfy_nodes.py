"""ComfyUI nodes: an exact, native drop-in for WanVideoDecode, a WANVAE patch so samplers that decode
by themselves (InfiniteTalk, MultiTalk) use this decoder, and a decode node for ComfyUI's core Wan VAE;
and the same patch for the Wan repository's own VAE object and diffusers' AutoencoderKLWan
(native_wan_vae), outside ComfyUI.

Nothing here imports ComfyUI or ComfyUI-WanVideoWrapper at import time; their pieces are used when
present (progress bar, interrupt). torch is imported when a node runs (ComfyUI always has it)."""
import functools
import inspect
import logging
import os
import sys
import threading
import types
import weakref

import numpy as np

from ._C import DeviceMemoryError, WanVAEError
from .api import (NORMALIZATIONS, TILE, TILE_STRIDE_X, TILE_STRIDE_Y, Decoder, backends, check_normalization,
                  normalize_frames)
from .arrays import PRECISION_BYTES, torch_float_type
from .devices import DEVICE_BUDGET_SHARE, device_index, precision_for
from .weights import is_wan22_layout, normalize_keys

CATEGORY = "WanVideoWrapper/native"
_TILE = {"min": 40, "max": 2048, "step": 8}
_STRIDE = {"min": 32, "max": 2040, "step": 8}
# The smallest tile side, in latent pixels, that the WANVAE patch decodes in: an exact tile holds the
# output halo (7 px a side for Wan 2.1) around a core of at least one latent pixel (8 px), 22 px in all,
# so 3 (24 px). The wrapper's blended tiles take any size: smaller ones are raised to it, and the
# picture is the same at every tile size.
_PATCH_MIN_TILE = 3


# ---- helpers -------------------------------------------------------------------------------------

def _comfy_progress(show=True):
    """progress(done, total) for the decoder: ComfyUI's interrupt, and its progress bar unless `show` is
    False (a sampler decoding its windows with pbar=False keeps the node's bar for its own steps)."""
    try:
        import comfy.model_management as mm
        import comfy.utils
    except ImportError:
        return None
    bar = []

    def progress(done, total):
        if show and not bar:
            bar.append(comfy.utils.ProgressBar(total))
        if bar:
            bar[0].update_absolute(done, total)
        mm.throw_exception_if_processing_interrupted()  # raises: the decode stops and frees its memory
        return True

    return progress


def _backend_for(module, *tensors, device=None, dtype=None):
    """(backend, precision, device): the CUDA backend, in the VAE's own precision (`dtype`, else its
    parameters'), whenever it is usable (ComfyUI keeps latents, and offloaded VAEs, on the CPU between
    nodes): on the VAE's own GPU (`device`: a core VAE's, where ComfyUI runs it), else the GPU a
    parameter or a tensor is on, else the current one. Otherwise the CPU (fp32). A `device` on the CPU
    (ComfyUI's --cpu-vae or --cpu) and WANVIDEO_VAE_BACKEND=cpu choose the CPU. A bf16 VAE on a GPU
    without bf16 arithmetic decodes in fp32 (precision_for)."""
    if os.environ.get("WANVIDEO_VAE_BACKEND") == "cpu" or getattr(device, "type", None) == "cpu":
        return "cpu", None, None
    cuda = backends()["cuda"]
    if not cuda["usable"]:
        _warn_cpu_beside_a_gpu(cuda.get("reason", ""))
        return "cpu", None, None
    p = next(iter(module.parameters()), None)
    places = [device] + [getattr(t, "device", None) for t in (p,) + tensors]
    on_gpu = [d for d in places if getattr(d, "type", None) == "cuda"]
    index = device_index(on_gpu[0]) if on_gpu else -1
    if index < 0:  # an index, not "cuda": the decoder cache keys on it
        index = _torch().cuda.current_device()
    float_type = torch_float_type(dtype if dtype is not None else getattr(p, "dtype", None))
    precision = float_type.precision if float_type else "bf16"  # no type of ours: the GPU decoder's default
    return "cuda", precision_for(precision, index), index


_warned_cpu = set()


def _other_gpu(torch):
    """Which GPU PyTorch runs on where it is one this backend has no code for (NVIDIA's alone), or None.
    ROCm answers to torch.cuda too."""
    if torch.cuda.is_available() and getattr(torch.version, "hip", None):
        return "an AMD GPU (ROCm)"
    mps = getattr(getattr(torch, "backends", None), "mps", None)
    if mps is not None and mps.is_available():
        return "an Apple GPU (MPS)"
    return None


def _warn_cpu_beside_a_gpu(reason):
    """A decode on the CPU where PyTorch has a GPU takes tens of minutes instead of seconds: said once
    per cause, on the console. An NVIDIA GPU: the CUDA backend is missing or cannot run, and why; an
    AMD or Apple GPU: this decoder has no backend for it, and ComfyUI's own decode runs there."""
    torch = _torch()
    other = _other_gpu(torch)
    key = other or reason
    if key in _warned_cpu or not (other or torch.cuda.is_available()):
        return  # said already, or no GPU
    _warned_cpu.add(key)
    slow = "A CPU decode of a few seconds of 720p video takes tens of minutes"
    if other:
        print(f"wanvideo_vae: decoding on the CPU: PyTorch runs on {other}, and this decoder's GPU backend is for "
              f"NVIDIA GPUs (CUDA). {slow}; ComfyUI's own VAE Decode, or WanVideoDecode, decodes on this GPU. "
              "WANVIDEO_VAE_BACKEND=cpu chooses the CPU (and silences this).", file=sys.stderr)
        return
    print(f"wanvideo_vae: decoding on the CPU although PyTorch has a GPU: the CUDA backend is not usable "
          f"({reason or 'not built'}). {slow}; see the README's 'Building the CUDA backend', or set "
          "WANVIDEO_VAE_BACKEND=cpu to choose the CPU (and silence this).", file=sys.stderr)


def _on_decoder_gpu(latents, placement):
    """Latents on another GPU than the decoder's (the VAE's) go to the decoder's."""
    backend, _, device = placement
    where = getattr(latents, "device", None)
    if backend == "cuda" and getattr(where, "type", None) == "cuda" and where.index != device:
        return latents.to(f"cuda:{device}")
    return latents


def _comfyui_make_room(nbytes, device):
    """Has ComfyUI unload models until `nbytes` fit on CUDA device `device` within the decoder's share
    of the free memory (DEVICE_BUDGET_SHARE); nothing outside ComfyUI. Dynamic models (ComfyUI's
    Dynamic VRAM) are unloaded too (for_dynamic left off): ComfyUI's own decode leaves them for its
    allocator to page out when torch runs short, which our device memory, not torch's, never asks."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return
    if hasattr(mm, "free_memory"):
        mm.free_memory(int(nbytes / DEVICE_BUDGET_SHARE), _torch().device("cuda", device))


def _make_room_for_weights(weights, precision, device):
    """Before a Decoder is built on GPU `device`: room for the weights in the decoder's precision (a
    Decoder is built before its decode asks room for its tiles)."""
    _comfyui_make_room(sum(int(v.numel()) for v in weights.values()) * PRECISION_BYTES[precision], device)


def _make_room_like_comfyui(dec, shape, tile_x, tile_y, tiled):
    """ComfyUI's own VAE decode has ComfyUI unload models until its working memory is free
    (load_models_gpu); the decode nodes ask the same for the arena of the tiles they were given, so
    the decode does not shrink its tiles to fit beside a model ComfyUI would have moved out anyway
    (our device memory is not torch's: ComfyUI cannot see it coming). Not from a sampler's own decodes
    (the VAE patch): those run beside the sampler's model."""
    if dec.backend != "cuda":
        return
    T, h, w = (int(n) for n in shape[-3:])
    plan = dec.plan(T, h, w, tile_x=tile_x, tile_y=tile_y, tile_stride_x=8, tile_stride_y=8,
                    enable_vae_tiling=tiled, max_memory=1 << 62)
    _comfyui_make_room(plan["planned_bytes"], dec.device)


def _wanvae_stats(vae):
    """(mean, std) from a WanVideoWrapper WANVAE: mean/inv_std, or older std, or scale=[mean, 1/std]."""
    mean = getattr(vae, "mean", None)
    if getattr(vae, "inv_std", None) is not None:
        std = 1.0 / vae.inv_std.float()
    elif getattr(vae, "std", None) is not None:
        std = vae.std
    elif getattr(vae, "scale", None) is not None:
        mean, std = vae.scale[0], 1.0 / vae.scale[1].float()
    else:
        raise ValueError("WANVAE has no mean/inv_std, std or scale: cannot un-normalize its latents")
    return mean.reshape(-1), std.reshape(-1)


def _decoder_weights(module):
    """The decoder-side entries of a torch module's state dict, by their checkpoint names, detached
    (the encoder's are no business of ours: ComfyUI's dynamic VRAM may swap them for copies in
    another dtype when it encodes). A weight without values (a meta tensor: a checkpoint that lacks
    it, under dynamic VRAM; an offload that keeps it elsewhere) is refused by name. Weights stored in
    8-bit floats (diffusers' enable_layerwise_casting, which casts them up as each layer runs) come as
    float32, which holds them exactly."""
    weights = normalize_keys({k: v.detach() for k, v in module.state_dict().items()})
    for key, value in weights.items():
        if getattr(value, "is_meta", False):
            raise ValueError(f"this VAE's weight '{key}' holds no values (a meta tensor): its checkpoint lacks it, "
                             "ComfyUI has not loaded it, or an offload keeps it elsewhere (diffusers' "
                             "enable_sequential_cpu_offload)")
        if value.is_floating_point() and value.element_size() == 1:
            weights[key] = value.float()
    return weights


FINGERPRINT_SAMPLES = 64  # values of each weight summed into the fingerprint
CLOSED_RETRIES = 2  # a cached Decoder closed by another thread before a decode started it: its successor


def _fingerprint(weights):
    """What identifies the weights' values, cheaply: dtypes, shapes and the sum of a strided sample of
    every weight (summed on the host, in float64). Not their address: ComfyUI moves an offloaded
    VAE between devices, which must not rebuild the Decoder; changed values must."""
    if not weights:
        return None
    sums = []
    for w in weights.values():  # each to the host: a lowvram VAE has weights on both sides
        flat = w.reshape(-1)
        step = max(flat.numel() // FINGERPRINT_SAMPLES, 1)
        # summed on the host: a GPU's reduction order differs from the CPU's, and a VAE that moved
        # between them must keep its fingerprint
        sums.append(float(flat[::step][:FINGERPRINT_SAMPLES].cpu().double().sum()))
    return (tuple(str(w.dtype) for w in weights.values()), tuple((k, tuple(w.shape)) for k, w in weights.items()),
            tuple(sums))


class _DecoderCache:
    """One converted Decoder per torch VAE object, rebuilt when its weights change. Those on a GPU are
    closed when ComfyUI unloads its models ("Unload Models"), which knows nothing of their memory."""

    def __init__(self):
        self._cache = weakref.WeakKeyDictionary()
        # get and close in one thread at a time (a Gradio app decodes in several): two threads asking for a
        # new VAE's Decoder build it once. Reentrant: building one may have ComfyUI unload models, which
        # closes the GPU ones.
        self._lock = threading.RLock()

    def get(self, owner, module, placement, mean=None, std=None, make_room=False):
        """owner's Decoder; make_room: one built on a GPU first has ComfyUI unload models until its weights
        fit (_make_room_for_weights)."""
        backend, precision, device = placement
        weights = _decoder_weights(module)
        key = (_fingerprint(weights), backend, precision, str(device))
        with self._lock:
            hit = self._cache.get(owner)
            if hit is not None and hit[0] == key and not hit[1].closed:
                return hit[1]
            if hit is not None:  # closed before its successor is built: never two copies of the weights on a GPU
                del self._cache[owner]
                _close_quietly(hit[1])
            if backend == "cuda":
                _close_gpu_decoders_when_comfyui_unloads()
                if make_room:
                    _make_room_for_weights(weights, precision, device)
            dec = Decoder(weights, backend=backend, precision=precision, device=device, mean=mean, std=std)
            self._cache[owner] = (key, dec)
            return dec

    def run(self, use, owner, module, placement, mean=None, std=None, make_room=False):
        """use(owner's Decoder). Another thread may close that Decoder between get and use (rebuilding it for
        other weights or another placement, or ComfyUI unloading models; a decode already running finishes
        first): use is then given its successor, up to CLOSED_RETRIES times."""
        for attempt in range(CLOSED_RETRIES + 1):
            dec = self.get(owner, module, placement, mean=mean, std=std, make_room=make_room)
            try:
                result = use(dec)
            except WanVAEError:
                if not dec.closed or attempt == CLOSED_RETRIES:
                    raise
                continue
            _log_decode(dec)
            return result

    def close_decoder(self, owner):
        """Closes and forgets owner's Decoder, if it has one."""
        with self._lock:
            hit = self._cache.pop(owner, None)
            if hit is not None:
                _close_quietly(hit[1])

    def forget_lock_after_fork(self):
        """In a forked child: a thread of the parent may have held the lock, and none here would let it go."""
        self._lock = threading.RLock()

    def close_gpu_decoders(self):
        """Closes and forgets every cached Decoder on a GPU (a decode running meanwhile finishes first).
        One that cannot close (asked from its own progress callback) is forgotten, freed when its
        decode lets it go, and the others still close."""
        with self._lock:
            for owner, (_, dec) in list(self._cache.items()):
                if dec.backend != "cuda":
                    continue
                del self._cache[owner]
                _close_quietly(dec)


_log = logging.getLogger("wanvideo_vae")


def _log_decode(dec):
    """A line in ComfyUI's console for each decode: that the native decoder ran, where, and what it took."""
    s = dec.last_stats
    where = f"cuda:{dec.device}" if dec.backend == "cuda" else "the CPU"
    tiles = "untiled" if s["n_tiles"] == 1 else f"in {s['tiles_x']}x{s['tiles_y']} tiles"
    _log.info("wanvideo_vae: %d frames of %dx%d decoded on %s in %s, %s, in %.2f s; working memory %.0f MiB, weights "
              "%.0f MiB", s["frames"], s["width"], s["height"], where, dec.precision, tiles, s["seconds_total"],
              s["arena_high_water"] / 2**20, s["weight_bytes"] / 2**20)


def _close_quietly(dec):
    try:
        dec.close()
    except Exception as e:  # noqa: BLE001 - an unload or a rebuild must not fail on one decoder
        print(f"wanvideo_vae: a cached decoder did not close ({e})", file=sys.stderr)


_decoders = _DecoderCache()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_decoders.forget_lock_after_fork)


def _close_gpu_decoders_when_comfyui_unloads():
    """Wraps comfy.model_management.unload_all_models (the "Unload Models" and "Free model and node
    cache" buttons, the /free route) once, so that it also frees the cached Decoders' device memory.
    ComfyUI calls it through the module, so the wrapper is what runs."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return
    unload = getattr(mm, "unload_all_models", None)
    if unload is None or getattr(unload, "_wanvideo_vae_wrapped", False):
        return

    def unload_all_models(*args, **kwargs):
        try:
            return unload(*args, **kwargs)
        finally:
            _decoders.close_gpu_decoders()

    unload_all_models._wanvideo_vae_wrapped = True
    unload_all_models.__wrapped__ = unload
    unload_all_models.__doc__ = unload.__doc__
    mm.unload_all_models = unload_all_models


def _torch():
    import torch
    return torch


def _check_wan21_vae(vae, what="WANVAE", instead="use WanVideoDecode for it"):
    """Refuses, with a plain message, the WANVAE kinds WanVideoWrapper also loads that this decoder
    does not implement: TAEHV (a tiny decoder of its own) and the Wan 2.2 VAE (16x, z_dim 48); and an
    object that holds no VAE. `what` names the object as its caller knows it, `instead` the way out."""
    kind = type(vae).__name__
    if kind == "TAEHV":
        raise ValueError(f"this {what} is a TAEHV tiny VAE; the native decoder decodes the Wan 2.1 VAE only: "
                         f"{instead}")
    factor = getattr(vae, "upsampling_factor", 8)
    if factor != 8:
        raise ValueError(f"this {what} ({kind}) upsamples {factor}x (the Wan 2.2 VAE); the native decoder decodes "
                         f"the Wan 2.1 VAE (8x) only: {instead}")
    if not hasattr(getattr(vae, "model", None), "state_dict"):
        raise ValueError(f"this {what} ({kind}) has no .model module holding the Wan 2.1 VAE's weights")


def _check_wan21_layout(state, what, decoder, instead):
    """Refuses a VAE's state dict of another layout than the Wan 2.1 VAE's, with a plain message: the Wan 2.2
    VAE's (its stages nest their blocks; ComfyUI's own test), or a head that is not RGB. `what` names the VAE
    as its caller knows it, `decoder` what decodes, `instead` the way out."""
    if is_wan22_layout(state):
        raise ValueError(f"this {what} has the Wan 2.2 VAE's layout (the Wan 2.2 VAE, or Qwen-Image 2.1's); {decoder} "
                         f"decodes the Wan 2.1 VAE only: {instead}")
    head = state.get("decoder.head.2.weight")
    if head is not None and head.shape[0] != 3:
        raise ValueError(f"this {what}'s decoder ends in {head.shape[0]} channels; {decoder} decodes the Wan 2.1 "
                         f"VAE's RGB (3-channel) head only: {instead}")


def _loader_output(vae):
    """The WANVAE a loader handed on. ComfyUI-MultiGPU's WanVideoVAELoaderMultiGPU (some versions)
    passes the wrapper loader's own 1-tuple, which its nodes index: the VAE inside."""
    return vae[0] if isinstance(vae, (tuple, list)) and len(vae) == 1 else vae


def _decode_raw(vae, latents, end_frame, tiled, tile_x, tile_y, show_progress=True, make_room=False):
    """Unclamped frames [F, H, W, 3] (NumPy) of one latent video [16, T, h, w] with a WANVAE's weights;
    make_room: first have ComfyUI unload models until its tiles fit (_make_room_like_comfyui)."""
    vae = _loader_output(vae)
    if isinstance(vae, _NativeDecode):  # one Decoder per VAE, whether it comes patched or not
        vae = vae._wrapped
    _check_wan21_vae(vae)
    mean, std = _wanvae_stats(vae)
    return _decode_module(vae, vae.model, mean, std, getattr(vae, "dtype", None), latents, end_frame, tiled, tile_x,
                          tile_y, show_progress, make_room)


def _decode_module(owner, module, mean, std, dtype, latents, end_frame, tiled, tile_x, tile_y, show_progress,
                   make_room):
    """_decode_raw's decode: with the weights of torch module `module`, in the Decoder cached for `owner`."""
    _check_no_gradient_asked(latents)
    placement = _backend_for(module, latents, mean, dtype=dtype)
    latents = _on_decoder_gpu(latents, placement)

    def use(dec):
        if make_room:
            _make_room_like_comfyui(dec, latents.shape, int(tile_x), int(tile_y), bool(tiled))
        return dec.decode(latents, raw=True, end_frame=end_frame, enable_vae_tiling=bool(tiled), tile_x=int(tile_x),
                          tile_y=int(tile_y), tile_stride_x=8, tile_stride_y=8,
                          progress=_comfy_progress(show_progress))

    return _retried_on_gpu_out_of_memory(
        lambda: _decoders.run(use, owner, module, placement, mean=mean, std=std, make_room=make_room))


def _check_no_gradient_asked(latents):
    """Refuses latents that ask for a gradient (they require one, and gradients are on): the frames of this
    decoder carry none, and a loss taken through them would silently get no gradient."""
    if getattr(latents, "requires_grad", False) and _torch().is_grad_enabled():
        raise ValueError("the latents require a gradient, and this decoder computes none (its frames would carry "
                         "none, silently): decode under torch.no_grad(), or with the VAE's own decode")


def _retried_on_gpu_out_of_memory(attempt):
    """attempt() (building the Decoder and decoding); once more where the GPU ran out of memory (another
    process took some after the decode sized its plan: the retry, torch's cache released first, plans
    for what is free then). A second failure is raised as ComfyUI's out-of-memory exception (torch's),
    which its executor answers as it does its own: unloading the models, with its advice; a
    MemoryError it would not. The host running out (a plain MemoryError) is not retried: unloading
    models onto the host would only make it worse."""
    try:
        return attempt()
    except DeviceMemoryError:
        pass
    torch = _torch()
    try:
        import comfy.model_management as mm
    except ImportError:
        mm = None
    (getattr(mm, "soft_empty_cache", None) or torch.cuda.empty_cache)()
    try:
        return attempt()
    except DeviceMemoryError as e:
        raise (getattr(mm, "OOM_EXCEPTION", None) or torch.cuda.OutOfMemoryError)(str(e)) from e


# ---- WanVideoDecode drop-in ----------------------------------------------------------------------

class WanVideoNativeDecode:
    """Drop-in for ComfyUI-WanVideoWrapper's WanVideoDecode: same inputs, same LATENT handling, same
    IMAGE output, decoded natively and exactly. Tiling changes memory and speed, never the picture."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": ("WANVAE",),
                "samples": ("LATENT",),
                "enable_vae_tiling": ("BOOLEAN", {"default": False, "tooltip": (
                    "Exact tiling: lowers memory, never changes the picture (no seams).")}),
                "tile_x": ("INT", {"default": TILE, **_TILE, "tooltip": "Tile width in pixels, halo included."}),
                "tile_y": ("INT", {"default": TILE, **_TILE, "tooltip": "Tile height in pixels, halo included."}),
                "tile_stride_x": ("INT", {"default": TILE_STRIDE_X, **_STRIDE, "tooltip": (
                    "Accepted for compatibility; exact tiles need no overlap, so it changes nothing.")}),
                "tile_stride_y": ("INT", {"default": TILE_STRIDE_Y, **_STRIDE, "tooltip": (
                    "Accepted for compatibility; exact tiles need no overlap, so it changes nothing.")}),
            },
            "optional": {
                "normalization": (list(NORMALIZATIONS), {"default": "default", "advanced": True}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, tile_x, tile_y, tile_stride_x, tile_stride_y):
        if tile_x <= tile_stride_x:
            return "Tile width must be larger than the tile stride width."
        if tile_y <= tile_stride_y:
            return "Tile height must be larger than the tile stride height."
        return True

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "decode"
    CATEGORY = CATEGORY
    DESCRIPTION = "WanVideo decode in native C/CUDA: exact (tiled == untiled), memory set by the tile size."

    def decode(self, vae, samples, enable_vae_tiling, tile_x, tile_y, tile_stride_x, tile_stride_y,
               normalization="default"):
        torch = _torch()
        check_normalization(normalization)  # before the decode, not after it
        video = samples.get("video", None)
        if video is not None:  # already decoded by the sampler, [F, H, W, 3] in [-1, 1]
            # one float32 copy on the host, normalized in place: the caller's tensor untouched
            frames = video.to(device="cpu", dtype=torch.float32, copy=True)
            return (frames.clamp_(-1.0, 1.0).add_(1.0).div_(2.0),)
        latents = samples["samples"]
        if latents.ndim == 5:
            if latents.shape[0] != 1:
                raise ValueError(f"WanVideoNativeDecode decodes one video at a time; got a batch of {latents.shape[0]}")
            latents = latents[0]
        if samples.get("has_ref", False):
            latents = latents[:, 1:]
        if samples.get("drop_last", False):
            latents = latents[:, :-1]
        end_frame = samples.get("end_image", None) is not None
        if end_frame and latents.shape[1] < 2:  # else an empty IMAGE, which fails somewhere downstream
            raise ValueError(f"WanVideoNativeDecode needs at least 2 latent frames with an end_image (the last is the "
                             f"end image, whose frame is dropped, and the video is the others); got {latents.shape[1]}")
        looped = samples.get("looped", False)
        raw = _decode_raw(vae, latents, end_frame, enable_vae_tiling, tile_x, tile_y, make_room=True)
        images = normalize_frames(raw, normalization, inplace=True)  # one array of the video's size, no copies
        if looped:
            loop_latents = torch.cat([latents[:, -3:], latents[:, :2]], dim=1)
            loop = normalize_frames(_decode_raw(vae, loop_latents, end_frame, enable_vae_tiling, tile_x, tile_y),
                                    "minmax", inplace=True)
            images = np.concatenate([loop[9:], images[5:]], axis=0)
        if end_frame:
            images = images[:-1]
        canvas = int(samples.get("canvas_expansion_px", 0) or 0)  # WanAnimate: frames sampled before the video
        if canvas and not looped:
            images = images[canvas:]
        return (torch.from_numpy(np.clip(images, 0.0, 1.0, out=images)),)


# ---- WANVAE patch --------------------------------------------------------------------------------

class _NativeDecode:
    """A VAE object whose decode runs the native decoder (the subclass's); everything else is the
    wrapped VAE's, which is never modified."""

    def __init__(self, vae):
        object.__setattr__(self, "_wrapped", vae)

    def __getattr__(self, name):
        wrapped = object.__getattribute__(self, "_wrapped")
        value = getattr(wrapped, name)
        if not isinstance(value, types.MethodType):
            return value

        @functools.wraps(value)
        def keep_patched(*args, **kwargs):  # vae = vae.to(device) / .eval() / .half() stays patched
            result = value(*args, **kwargs)
            return self if result is wrapped else result
        return keep_patched

    def __setattr__(self, name, value):
        setattr(self._wrapped, name, value)


class NativeWanVAE(_NativeDecode):
    """A WANVAE (ComfyUI-WanVideoWrapper's) whose decode(...) runs the native decoder.

    decode returns what WanVideoWrapper's decode returns: a list with one [3, F, H, W] tensor per
    video; tiled, float32 clamped to [-1, 1] on the CPU; untiled, the raw decode in the VAE's dtype
    (output_dtype with output_device) on output_device, else `device`, else the latents' device."""

    def decode(self, hidden_states, device=None, tiled=False, end_=False, tile_size=(34, 34), tile_stride=(18, 16),
               pbar=True, output_device=None, output_dtype=None, **unused):
        torch = _torch()
        videos = []
        # in latent pixels, height first, as the wrapper's tiled_decode reads them; read only when tiled, as
        # the wrapper does (None where a caller passes it untiled)
        tile_h, tile_w = (max(_PATCH_MIN_TILE, t) for t in tile_size) if tiled and tile_size is not None else (34, 34)
        for latents in hidden_states:
            raw = _decode_raw(self._wrapped, latents, bool(end_), tiled, 8 * tile_w, 8 * tile_h,
                              show_progress=bool(pbar))
            if tiled:  # the wrapper's tiled decode blends on the CPU in float32 and clamps
                videos.append(torch.from_numpy(np.clip(raw, -1.0, 1.0, out=raw)).permute(3, 0, 1, 2))
                continue
            # the wrapper's end-frame decode (double_decode) takes no output_device / output_dtype
            out_device, out_dtype = (None, None) if end_ else (output_device, output_dtype)
            where = next((d for d in (out_device, device) if d is not None), getattr(latents, "device", "cpu"))
            dtype = out_dtype if out_device is not None and out_dtype is not None else \
                getattr(self._wrapped, "dtype", torch.float32)
            videos.append(torch.from_numpy(raw).permute(3, 0, 1, 2).to(device=where, dtype=dtype))
        return videos


class NativeWanRepoVAE(_NativeDecode):
    """The Wan 2.1 repository's own VAE object (wan.modules.vae.WanVAE, which Wan's generate.py and
    Gradio app and InfiniteTalk's and MultiTalk's pipelines hold) whose decode(zs) runs the native
    decoder, returning what its own returns: for a list of latents [16, T, h, w], a list of videos
    [3, F, H, W], float32, clamped to [-1, 1], each on its latents' device. Tiles are chosen by the
    free memory (exact: never a different picture)."""

    def decode(self, zs):
        torch = _torch()
        videos = []
        for latents in zs:
            raw = _decode_raw(self._wrapped, latents, False, False, TILE, TILE, show_progress=False)
            frames = torch.from_numpy(np.clip(raw, -1.0, 1.0, out=raw)).permute(3, 0, 1, 2)
            videos.append(frames.to(getattr(latents, "device", "cpu")))
        return videos


def _native_diffusers_decode(self, z, return_dict=True):
    """The decode native_wan_vae gives diffusers' AutoencoderKLWan `self`: what diffusers' own returns, the videos
    [B, 3, F, H, W] clamped to [-1, 1], in z's dtype on z's device, as a DecoderOutput (a 1-tuple where
    return_dict is False). Its offload hook runs first, as diffusers' decode runs it (the model before the VAE
    leaves the GPU). The pipelines un-normalize their latents before they decode, so none is done here; the VAE's
    tiling and slicing settings change nothing (the tiles follow the free memory, and are exact)."""
    torch = _torch()
    z_dim = int(self.config.z_dim)
    if getattr(z, "ndim", None) != 5 or z.shape[0] < 1 or z.shape[1] != z_dim:
        raise ValueError(f"AutoencoderKLWan.decode takes latents [B, {z_dim}, T, h, w] (B >= 1), got shape "
                         f"{list(getattr(z, 'shape', ()))}")
    _check_no_gradient_asked(z)
    _check_weights_in_memory(self)
    hook = getattr(self, "_hf_hook", None)
    if hasattr(hook, "pre_forward"):
        hook.pre_forward(self)
    identity = np.zeros(z_dim, np.float32), np.ones(z_dim, np.float32)
    sample = None
    try:
        for i, latents in enumerate(z):
            raw = _decode_module(self, self, *identity, self.dtype, latents, False, False, TILE, TILE, False, False)
            video = torch.from_numpy(np.clip(raw, -1.0, 1.0, out=raw)).permute(3, 0, 1, 2)
            if sample is None:
                sample = torch.empty((len(z),) + tuple(video.shape), dtype=torch.float32)
            sample[i] = video
    finally:
        if _offloaded(self):  # an offloaded VAE holds no device memory between its decodes: nor does its Decoder
            _decoders.close_decoder(self)
    sample = sample.to(device=z.device, dtype=z.dtype)
    if not return_dict:
        return (sample,)
    from diffusers.models.autoencoders.vae import DecoderOutput
    return DecoderOutput(sample=sample)


class _NativeDiffusersDecode:
    """The decode native_wan_vae sets on diffusers' AutoencoderKLWan: _native_diffusers_decode of that VAE, held
    weakly. A bound method or a partial stored on the VAE would hold it in a cycle, and the VAE's weights and the
    Decoder cached for it would outlive its last reference until Python's cycle collector ran. Pickled or copied
    with the VAE (torch.save, copy.deepcopy), it comes back as the copy's own: a bound method would be pickled as
    a lookup of its name on the VAE, which has none."""

    __slots__ = ("_vae", "__weakref__")

    def __init__(self, vae):
        self._vae = weakref.ref(vae)

    @property
    def vae(self):
        """The VAE this decode belongs to (None once it is gone)."""
        return self._vae()

    def _live_vae(self):
        vae = self._vae()
        if vae is None:
            raise ReferenceError("this native decode's AutoencoderKLWan no longer exists")
        return vae

    def __call__(self, z, return_dict=True):
        return _native_diffusers_decode(self._live_vae(), z, return_dict)

    def __reduce__(self):
        return type(self), (self._live_vae(),)


def _group_offload_hooks(vae):
    """The group offloading hooks (diffusers' enable_group_offload) on `vae` and its submodules."""
    hooks = []
    for module in vae.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook("group_offloading") if hasattr(registry, "get_hook") else None
        if hook is not None:
            hooks.append(hook)
    return hooks


def _offloaded(vae):
    """Whether a diffusers VAE is offloaded (enable_model_cpu_offload's hook, or group offloading)."""
    return getattr(vae, "_hf_hook", None) is not None or bool(_group_offload_hooks(vae))


def _check_weights_in_memory(vae):
    """Refuses a diffusers VAE whose weights group offloading keeps on disk: its modules then hold placeholders,
    not the weights (read, they would decode garbage)."""
    for hook in _group_offload_hooks(vae):
        if getattr(getattr(hook, "group", None), "offload_to_disk_path", None):
            raise ValueError("this VAE's weights are offloaded to disk (diffusers' enable_group_offload with "
                             "offload_to_disk_path), where the native decoder cannot read them: offload it in "
                             "memory (without offload_to_disk_path) or with enable_model_cpu_offload, or keep "
                             "its own decode")


def _is_diffusers_wan_vae(vae):
    """Whether `vae` is diffusers' AutoencoderKLWan (or torch.compile's module around one)."""
    return any(cls.__name__ == "AutoencoderKLWan" for cls in type(getattr(vae, "_orig_mod", vae)).__mro__)


def _patch_diffusers_vae(vae):
    """diffusers' AutoencoderKLWan `vae` with its decode native: in place (an attribute of the object over its
    class's method), so that it stays the torch module diffusers' pipelines move, offload and save."""
    if isinstance(getattr(vae, "decode", None), _NativeDiffusersDecode) and vae.decode.vae is vae:
        return vae
    # refused now, not after sampling: the Wan 2.2 VAE's layout, weights without values (sequential offload) or
    # on disk (group offload)
    _check_weights_in_memory(vae)
    _check_wan21_layout(_decoder_weights(vae), "AutoencoderKLWan", "the native decoder", "keep its own decode")
    vae.decode = _NativeDiffusersDecode(vae)
    return vae


def _decodes_as_a_wanvae(vae):
    """Whether `vae`'s decode takes a WanVideoWrapper WANVAE's arguments (its tiled among them), not decode(zs)."""
    try:
        return "tiled" in inspect.signature(vae.decode).parameters
    except (AttributeError, TypeError, ValueError):  # no decode, or one whose signature Python cannot read
        return False


def native_wan_vae(vae):
    """The Wan 2.1 repository's VAE object (wan.modules.vae.WanVAE) with its decode(zs) running the native
    decoder: a NativeWanRepoVAE around it, `vae` itself not modified. diffusers' AutoencoderKLWan is patched in
    place instead (its decode(z, return_dict) alone; `del vae.decode` restores diffusers' own), so that it
    stays the torch module its pipeline moves, offloads and saves. Either way, for a pipeline that holds
    one: `pipeline.vae = native_wan_vae(pipeline.vae)`. A WanVideoWrapper WANVAE goes through
    WanVideoNativeVAEPatch instead (its decode takes other arguments)."""
    if isinstance(vae, NativeWanRepoVAE):
        return vae
    if _is_diffusers_wan_vae(vae):
        return _patch_diffusers_vae(vae)
    if _decodes_as_a_wanvae(vae):
        raise ValueError(f"this VAE ({type(vae).__name__}) decodes as a WanVideoWrapper WANVAE (decode(hidden_states, "
                         "device, tiled, ...)), not as the Wan repository's decode(zs): patch it with "
                         "WanVideoNativeVAEPatch().patch(vae) (in ComfyUI: the node \"WanVideo VAE: use native exact "
                         "decode\")")
    # refused now, not at the first decode: another VAE the Wan repositories hold (Wan 2.2's Wan2_2_VAE, whose
    # attributes are as this one's), or one without mean/std or scale
    _check_wan21_vae(vae, "VAE", "keep its own decode")
    _check_wan21_layout(vae.model.state_dict(), "VAE", "the native decoder", "keep its own decode")
    _wanvae_stats(vae)
    return NativeWanRepoVAE(vae)


class WanVideoNativeVAEPatch:
    """Returns the WANVAE with its decode replaced by the native exact decoder, so samplers that decode
    each window themselves (InfiniteTalk, MultiTalk) get the memory savings. The input is not modified."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": ("WANVAE",)}}

    RETURN_TYPES = ("WANVAE",)
    RETURN_NAMES = ("vae",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY
    DESCRIPTION = "Makes every decode of this WANVAE (the sampler's too) use the native exact decoder."

    def patch(self, vae):
        inner = _loader_output(vae)
        if not isinstance(inner, NativeWanVAE):
            _check_wan21_vae(inner)  # before sampling, not at its first decode
            inner = NativeWanVAE(inner)
        return (type(vae)([inner]) if isinstance(vae, (tuple, list)) else inner,)  # handed on as it came


# ---- ComfyUI core VAE ----------------------------------------------------------------------------


def _core_vae_decode_category():
    """The menu category of ComfyUI's own VAE Decode ("latent"; "model/latent" in newer versions), so the
    node sits beside it in whichever ComfyUI loads the pack."""
    category = getattr(getattr(sys.modules.get("nodes"), "VAEDecode", None), "CATEGORY", None)
    return category if isinstance(category, str) else "latent"


def _check_no_weight_patches(vae):
    """Refuses a core VAE whose ModelPatcher holds weight patches (a LoRA or a merge some custom node
    added): ComfyUI applies them only when it loads the VAE to run it (under Dynamic VRAM, only inside
    each layer's forward), and this node reads the module's own weights, so it would decode without
    them, silently."""
    patches = getattr(getattr(vae, "patcher", None), "patches", None)
    patched = sorted(str(key) for key, entries in patches.items() if entries) if isinstance(patches, dict) else []
    if patched:
        raise ValueError(f"this VAE carries weight patches ({len(patched)} weights, e.g. '{patched[0]}': a LoRA or a "
                         "merge) that ComfyUI applies only as it runs the VAE; this node reads the unpatched weights: "
                         "use ComfyUI's VAE Decode for it")


def _like_core_vae_output(vae, images):
    """Images where core's VAE.decode leaves them: on its output_device (the CPU; the GPU with --gpu-only)
    in its vae_output_dtype() (float16 with --fp16-intermediates), where the VAE says."""
    output_dtype = getattr(vae, "vae_output_dtype", None)
    return images.to(device=getattr(vae, "output_device", None),
                     dtype=output_dtype() if callable(output_dtype) else None)


class WanCoreVAENativeDecode:
    """Decodes a core LATENT with ComfyUI's own Wan 2.1 VAE (the VAE type from Load VAE), natively: videos
    [B, 16, T, h, w], and images [B, 16, h, w] (Qwen-Image's VAE is a Wan 2.1 VAE) as one-frame videos.
    Core latents reach the VAE already un-normalized, so no mean/std applies."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "samples": ("LATENT",),
                "vae": ("VAE",),
                "tile_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 32, "tooltip": (
                    "Tile size in output pixels, halo included; exact, so it only sets memory and speed.")}),
                "enable_tiling": ("BOOLEAN", {"default": True}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    CATEGORY = _core_vae_decode_category()
    DESCRIPTION = "Wan 2.1 VAE decode in native C/CUDA, exact and memory-bounded."

    def decode(self, samples, vae, tile_size=512, enable_tiling=True):
        torch = _torch()
        model = getattr(vae, "first_stage_model", vae)
        z = samples["samples"]
        if getattr(z, "is_nested", False):  # as core's VAE Decode does
            z = z.unbind()[0]
        state = model.state_dict() if hasattr(model, "state_dict") else {}
        conv1 = state.get("decoder.conv1.weight")
        if conv1 is None or conv1.ndim != 5:
            raise ValueError(f"this node decodes with a Wan 2.1 video VAE; this VAE ({type(model).__name__}) has "
                             "no 3-d decoder.conv1.weight")
        _check_wan21_layout(state, "VAE", "this node", "use ComfyUI's VAE Decode for it")
        _check_no_weight_patches(vae)
        z_dim = int(conv1.shape[1])
        if z.ndim == 4:  # image latents (Qwen-Image's VAE is a Wan 2.1 VAE): each a one-frame video, as in core
            z = z[:, :, None]
        if z.ndim != 5 or z.shape[1] != z_dim:
            raise ValueError(f"this node decodes Wan 2.1 latents, videos [B, {z_dim}, T, h, w] or images "
                             f"[B, {z_dim}, h, w]; got {list(z.shape)}")
        placement = _backend_for(model, z, device=getattr(vae, "device", None), dtype=getattr(vae, "vae_dtype", None))
        z = _on_decoder_gpu(z, placement)

        def decode(video):
            def use(dec):
                _make_room_like_comfyui(dec, z.shape, tile_size, tile_size, bool(enable_tiling))
                return dec.decode(video, enable_vae_tiling=bool(enable_tiling), tile_x=tile_size, tile_y=tile_size,
                                  tile_stride_x=8, tile_stride_y=8, progress=_comfy_progress())

            return _decoders.run(use, vae, model, placement, mean=[0.0] * z_dim, std=[1.0] * z_dim, make_room=True)

        frames = [_retried_on_gpu_out_of_memory(lambda v=v: decode(v)) for v in z]
        images = torch.from_numpy(frames[0] if len(frames) == 1 else np.concatenate(frames, axis=0))
        return (_like_core_vae_output(vae, images),)


NODE_CLASS_MAPPINGS = {
    "WanVideoNativeDecode": WanVideoNativeDecode,
    "WanVideoNativeVAEPatch": WanVideoNativeVAEPatch,
    "WanCoreVAENativeDecode": WanCoreVAENativeDecode,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "WanVideoNativeDecode": "WanVideo Decode (native, exact)",
    "WanVideoNativeVAEPatch": "WanVideo VAE: use native exact decode",
    "WanCoreVAENativeDecode": "Wan VAE Decode (native, exact)",
}
