"""Checkpoint loading: .safetensors (read here, no extra dependency) and .pth / .pt state dicts."""
import json
import math
import os
import pickle
import re
import struct
import warnings

import numpy as np

from ._C import WanVAEError
from .arrays import _is_torch_tensor, first_line, host_array
from .tracebacks import keeps_nothing_on_error

# safetensors dtype -> NumPy dtype; BF16 is kept as raw 2-byte items ("V2"), which the core reads as bfloat16.
_ST_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("V2"), "F64": np.dtype("<f8")}
_DECODER_PREFIXES = ("decoder.", "conv2.")

# diffusers' AutoencoderKLWan names the Wan 2.1 decoder's weights otherwise (diffusers' conversion of the
# checkpoint). Its names -> the checkpoint's: stage s of up_blocks holds the checkpoint's upsamples 4s..4s+2
# (its three resnets) and 4s+3 (its upsampler); mid_block's resnets r are middle 2r, its attention middle 1.
_DIFFUSERS_RESNET_PARTS = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3",
                           "conv2": "residual.6", "conv_shortcut": "shortcut"}
_RESNET = r"(?P<part>norm1|conv1|norm2|conv2|conv_shortcut)\.(?P<rest>.+)"
_DIFFUSERS_NAMES = [(re.compile(pattern), name) for pattern, name in (
    (r"post_quant_conv\.(?P<rest>.+)", lambda m: f"conv2.{m['rest']}"),
    (r"decoder\.conv_in\.(?P<rest>.+)", lambda m: f"decoder.conv1.{m['rest']}"),
    (r"decoder\.mid_block\.attentions\.0\.(?P<rest>.+)", lambda m: f"decoder.middle.1.{m['rest']}"),
    (r"decoder\.mid_block\.resnets\.(?P<r>[01])\." + _RESNET,
     lambda m: f"decoder.middle.{2 * int(m['r'])}.{_DIFFUSERS_RESNET_PARTS[m['part']]}.{m['rest']}"),
    (r"decoder\.up_blocks\.(?P<s>[0-3])\.resnets\.(?P<r>[0-2])\." + _RESNET,
     lambda m: f"decoder.upsamples.{4 * int(m['s']) + int(m['r'])}.{_DIFFUSERS_RESNET_PARTS[m['part']]}.{m['rest']}"),
    (r"decoder\.up_blocks\.(?P<s>[0-2])\.upsamplers\.0\.(?P<rest>.+)",
     lambda m: f"decoder.upsamples.{4 * int(m['s']) + 3}.{m['rest']}"),
    (r"decoder\.norm_out\.(?P<rest>.+)", lambda m: f"decoder.head.0.{m['rest']}"),
    (r"decoder\.conv_out\.(?P<rest>.+)", lambda m: f"decoder.head.2.{m['rest']}"),
)]


def checkpoint_name(key):
    """A diffusers AutoencoderKLWan weight name as the Wan 2.1 checkpoint names it; any other name as it is."""
    for pattern, name in _DIFFUSERS_NAMES:
        m = pattern.fullmatch(key)
        if m:
            return name(m)
    return key


# The Wan 2.2 VAE's layout (its decoder is another): its stages nest their blocks (the checkpoint's names, as
# ComfyUI tells it), or hold one upsampler each (diffusers')
_WAN22_NAMES = re.compile(r"(?:model\.)?decoder\.(?:upsamples\.\d+\.upsamples|up_blocks\.\d+\.upsampler)\.")


def is_wan22_layout(keys):
    """Whether weight names are of the Wan 2.2 VAE's layout, in the checkpoint's names or diffusers'."""
    return any(isinstance(k, str) and _WAN22_NAMES.match(k) for k in keys)


def decoder_key(key):
    """A checkpoint key as the decoder names it ('model.' prefix and torch.compile's '_orig_mod' level
    removed: WanVideoWrapper compiles the decoder when asked; a diffusers AutoencoderKLWan's name made the
    checkpoint's), or None for an encoder-side key."""
    if not isinstance(key, str):
        raise WanVAEError(f"weight names must be str (checkpoint keys), got {type(key).__name__} {key!r}")
    if "_orig_mod" in key:
        key = ".".join(part for part in key.split(".") if part != "_orig_mod")
    k = checkpoint_name(key[len("model."):] if key.startswith("model.") else key)
    return k if k.startswith(_DECODER_PREFIXES) else None


def normalize_keys(state):
    """Decoder-side entries of a state dict, keys as decoder_key names them; encoder keys dropped. Two
    keys naming one weight ('model.x' beside 'x') are an error: which one to take is not ours to guess."""
    out, given = {}, {}
    for key, value in state.items():
        k = decoder_key(key)
        if k is None:
            continue
        if k in out:
            raise WanVAEError(f"weights '{given[k]}' and '{key}' both name the decoder weight '{k}'")
        out[k], given[k] = value, key
    return out


def given_names(state):
    """{decoder name: the name `state` gives it} for each decoder weight `state` names otherwise (diffusers'
    names, a 'model.' prefix): an error naming a weight names it as given too."""
    return {k: key for key in state if (k := decoder_key(key)) is not None and k != key}


def bf16_to_float32(a):
    """Raw bfloat16 items (NumPy "V2" or uint16/int16, or a torch bfloat16 tensor) to float32, exactly."""
    a = host_array(a, "bf16_to_float32") if _is_torch_tensor(a) else np.asarray(a)  # torch bf16 -> "V2"
    if a.dtype.itemsize != 2 or a.dtype.kind not in "uiV" or a.dtype.fields is not None:
        raise WanVAEError(f"bf16_to_float32 takes raw bfloat16 items (2-byte 'V2', uint16 or int16), not {a.dtype}")
    a = np.ascontiguousarray(a)
    if a.dtype.kind in "ui" and not a.dtype.isnative:  # a view would read big-endian items backwards
        a = a.astype(a.dtype.newbyteorder("="))
    bits = a.view(np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32)


_ST_MAX_HEADER = 100_000_000  # the safetensors format's limit on its header's length


def _what_else(head, n, size):
    """What a file whose header length n is past its end or the format's limit is, from its first bytes:
    what a download that went wrong leaves in a model's place is named, with what to do."""
    if head[8:9] == b"{" and n <= _ST_MAX_HEADER:  # a header that starts as one does; the file ends inside it
        return (f"truncated: its header runs to byte {8 + n} but the file has {size} bytes (an incomplete "
                "download? download it again)")
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the model itself (fetch it with git lfs pull, or download the file)"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive, as PyTorch saves a checkpoint, not a safetensors file: name it .pth"
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "an HTML page, not a safetensors file (a download that saved an error or login page? download it again)"
    if n <= size - 8:
        return f"not a safetensors file (the header length its first 8 bytes give, {n}, is past the format's limit)"
    return (f"not a safetensors file (the header length its first 8 bytes give, {n}, is past the end of its "
            f"{size} bytes)")


def _read_safetensors_header(f, path, size):
    raw = f.read(8)
    if len(raw) != 8:
        raise WanVAEError(f"{path}: not a safetensors file (shorter than 8 bytes)")
    (n,) = struct.unpack("<Q", raw)
    if n > size - 8 or n > _ST_MAX_HEADER:  # not read: it could be gigabytes of a file of another kind
        raise WanVAEError(f"{path}: {_what_else(raw + f.read(64), n, size)}")
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise WanVAEError(f"{path}: safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise WanVAEError(f"{path}: safetensors header is not a JSON object")
    return header, 8 + n


def _tensor_entry(info):
    """(dtype, shape, begin, end) of a safetensors header's entry; KeyError, TypeError, ValueError or
    OverflowError for a malformed one."""
    dtype = _ST_DTYPES[info["dtype"]]
    shape = [int(s) for s in info["shape"]]
    begin, end = (int(o) for o in info["data_offsets"])
    return dtype, shape, begin, end


def _data_end(header):
    """Where the data of a safetensors header's tensors end (bytes after the header): of the entries whose
    offsets agree with their shape and dtype."""
    ends = [0]
    for info in header.values():
        try:
            dtype, shape, begin, end = _tensor_entry(info)
        except (KeyError, TypeError, ValueError, OverflowError):
            continue  # "__metadata__", or an entry the loader refuses by name
        if 0 <= begin and end - begin == math.prod(shape) * dtype.itemsize:
            ends.append(end)
    return max(ends)


def safetensors_names(path):
    """The names of the tensors in a .safetensors file (its header only is read)."""
    with open(path, "rb") as f:
        header, _ = _read_safetensors_header(f, path, os.path.getsize(path))
    return [name for name in header if name != "__metadata__"]


def _checked_entries(path, header, data_start, size, keys):
    """[(name, dtype, shape, begin, end)] of the header's tensors (those in `keys`), each checked
    against the file; a WanVAEError naming the first that is not readable."""
    entries = []
    for name, info in header.items():
        if name == "__metadata__" or (keys is not None and name not in keys):
            continue
        try:
            dtype, shape, begin, end = _tensor_entry(info)
        except (KeyError, TypeError, ValueError, OverflowError):
            raise WanVAEError(f"{path}: tensor '{name}' has an unsupported dtype or a malformed entry") from None
        if any(s < 0 for s in shape):
            raise WanVAEError(f"{path}: tensor '{name}' has a negative dimension in its shape {shape}")
        nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no wraparound
        if 0 <= begin and end - begin == nbytes and data_start + end > size:
            raise WanVAEError(f"{path}: truncated: its tensors run to byte {data_start + _data_end(header)} but the "
                              f"file has {size} bytes (an incomplete download? download it again)")
        if begin < 0 or end < begin or end - begin != nbytes:
            raise WanVAEError(f"{path}: tensor '{name}' has data offsets [{begin}, {end}) out of range or not "
                              f"matching its shape {shape} and dtype {info['dtype']}")
        entries.append((name, dtype, shape, begin, end))
    return entries


def load_safetensors(path, keys=None):
    """{name: array} for every tensor (or those in `keys`), memory-mapped read-only. Only those are
    checked: a tensor of a dtype the decoder has no use for (an int64 index beside the latents) may
    be in the file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header, data_start = _read_safetensors_header(f, path, size)
    # Every entry is checked before the file is mapped: an error's traceback then holds no map, which
    # on Windows would keep the file locked (not deletable, not replaceable) while the error is kept.
    entries = _checked_entries(path, header, data_start, size, keys)
    mm = np.memmap(path, dtype=np.uint8, mode="r") if size > data_start else np.zeros(0, np.uint8)
    out = {}
    for name, dtype, shape, begin, end in entries:
        arr = mm[data_start + begin:data_start + end].view(dtype).reshape(shape)
        out[name] = arr.astype(np.float32) if dtype == np.float64 else arr
    return out


def torch_load(path):
    """torch.load of a .pt/.pth file onto the CPU, tensors and plain containers only."""
    try:
        import torch
    except ImportError:
        raise WanVAEError(f"{path}: reading .pt/.pth files needs PyTorch (pip install torch)") from None
    try:
        with warnings.catch_warnings():  # torch warns before it refuses a pickle it does not know
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):  # torch's words for a pickle it will not load
            raise WanVAEError(f"{path}: not a PyTorch file it can read ({first_line(e)})") from None
        raise WanVAEError(f"{path}: holds Python objects other than tensors, which are not loaded (torch.load with "
                          "weights_only=True); save the tensors alone (or a dict of them), or as .safetensors or "
                          ".npy") from None
    except Exception as e:  # torch raises many types for corrupt files
        raise WanVAEError(f"{path}: PyTorch could not read it ({type(e).__name__}: {first_line(e)}): a damaged or "
                          "incomplete file? download it again") from None


def _is_safetensors(path):
    """Whether the file starts as a safetensors file does: a header length within it, then "{"."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and struct.unpack("<Q", head[:8])[0] <= os.path.getsize(path) - 8 and head[8:] == b"{"


def _load_torch(path):
    if _is_safetensors(path):
        raise WanVAEError(f"{path}: a safetensors file, not a PyTorch one: name it .safetensors")
    state = torch_load(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WanVAEError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def check_input_file(path):
    """A clear error unless `path` is a file that exists (a folder or a device is not)."""
    if os.path.isdir(path):
        raise WanVAEError(f"{path}: is a folder, not a file")
    if not os.path.exists(path):
        raise WanVAEError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise WanVAEError(f"{path}: not a regular file")


# A diffusers model folder's weights, in the order diffusers' from_pretrained prefers them; the VAE of a pipeline's
# folder is in its vae/. The Wan repositories' own folders (Wan-AI/Wan2.1-T2V-1.3B) hold the VAE as Wan2.1_VAE.pth,
# beside the transformer as a diffusion_pytorch_model file of another class.
DIFFUSERS_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
WAN_REPOSITORY_VAE = "Wan2.1_VAE.pth"


def _model_class(folder):
    """The class a model folder's config.json names ("_class_name"), or None where it names none or is unreadable."""
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    name = config.get("_class_name") if isinstance(config, dict) else None
    return name if isinstance(name, str) else None


def _diffusers_weights_file(folder):
    """The weights file of a diffusers VAE folder, of the VAE of a diffusers pipeline's folder (its vae/), or the
    VAE of a Wan repository's folder. A folder whose config names another class than a VAE's (the transformer's
    folder, a Wan repository's root) is passed over."""
    for where in (folder, os.path.join(folder, "vae")):
        model_class = _model_class(where)
        if model_class is not None and not model_class.startswith("AutoencoderKL"):
            continue
        for name in DIFFUSERS_WEIGHT_FILES:
            if os.path.isfile(os.path.join(where, name)):
                return os.path.join(where, name)
    if os.path.isfile(os.path.join(folder, WAN_REPOSITORY_VAE)):
        return os.path.join(folder, WAN_REPOSITORY_VAE)
    raise WanVAEError(f"{folder}: is a folder, not a checkpoint file (nor a diffusers model folder: no "
                      f"{' or '.join(DIFFUSERS_WEIGHT_FILES)} of a VAE in it or in its vae/, nor a Wan repository's "
                      f"folder: no {WAN_REPOSITORY_VAE})")


@keeps_nothing_on_error
def load_weights(path):
    """The decoder weights of a Wan 2.1 VAE checkpoint: {key: array}, keys as the checkpoint names them
    (without 'model.'; diffusers' names made the checkpoint's). `path`: the file, or a model folder
    (AutoencoderKLWan's, a diffusers pipeline's with it in vae/, or a Wan repository's with Wan2.1_VAE.pth).

    .safetensors files are memory-mapped (bfloat16 tensors come back as raw "V2" NumPy arrays, which
    the decoder reads as bfloat16; bf16_to_float32 converts them). .pth/.pt/.bin files need torch and
    return its tensors."""
    path = os.fsdecode(path)  # a str, also from a bytes path
    if os.path.isdir(path):
        path = _diffusers_weights_file(path)
    check_input_file(path)
    kind = os.path.splitext(path)[1].lower()
    if kind == ".safetensors":
        state = load_safetensors(path, {name for name in safetensors_names(path) if decoder_key(name)})
    elif kind in (".pth", ".pt", ".ckpt", ".bin"):
        state = _load_torch(path)
    else:
        raise WanVAEError(f"{path}: unknown checkpoint format (expected .safetensors, .pth, .pt, .ckpt or .bin)")
    weights = normalize_keys(state)
    if not weights:
        raise WanVAEError(f"{path}: no decoder weights found (keys starting with 'decoder.' or 'conv2.'; diffusers' "
                          "with 'decoder.' or 'post_quant_conv.')")
    return weights
