"""Turning user arrays (NumPy, torch) into objects the C core reads through the array interface.

bfloat16 has no standard typestr. The core reads "<V2" / "|V2" as bfloat16, the way recent torch
and ml_dtypes export it. NumPy has no bfloat16, so a torch bfloat16 tensor is reinterpreted as
int16 and viewed as NumPy "V2" (raw 2-byte items); no bits change.
"""
import sys
from collections import namedtuple

import numpy as np

from ._C import WanVAEError

# The float types the decoder takes, by torch's name (NumPy's too, where it has one): the decoder
# precision they map to, their bytes, and their typestr in the array interfaces (bfloat16: "<V2").
FloatType = namedtuple("FloatType", "precision size typestr")
FLOAT_TYPES = {"float32": FloatType("fp32", 4, "<f4"), "float16": FloatType("fp16", 2, "<f2"),
               "bfloat16": FloatType("bf16", 2, "<V2")}
PRECISION_BYTES = {t.precision: t.size for t in FLOAT_TYPES.values()}
PRECISIONS = tuple(PRECISION_BYTES)


def unsupported_dtype(what, dtype):
    """The error for an array of a type the decoder does not take."""
    return WanVAEError(f"{what}: unsupported dtype {dtype}; expected {', '.join(list(FLOAT_TYPES)[:-1])} or "
                       f"{list(FLOAT_TYPES)[-1]}")


def torch_float_type(dtype):
    """FLOAT_TYPES' entry of a torch dtype, or None."""
    return FLOAT_TYPES.get(str(dtype).replace("torch.", ""))


def _is_torch_tensor(x):
    """A torch tensor, subclasses included (torch is loaded if x is one: no import here)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def is_cuda_tensor(x):
    return _is_torch_tensor(x) and getattr(x.device, "type", "cpu") == "cuda"


def dense_tensor(t, what):
    """t detached, as a strided tensor whose memory holds its values: a tensor with its negation
    pending (z.conj().imag: the neg bit) stores the other sign; sparse and meta tensors are refused."""
    import torch

    if t.layout != torch.strided or t.device.type == "meta" or t.is_nested:
        kind = "nested" if t.is_nested else str(t.layout)
        raise WanVAEError(f"{what}: a {kind} tensor on {t.device.type} holds no dense data to read; pass a dense one")
    return t.detach().resolve_neg()


def first_line(e, most=300):
    """An exception's message to its first line (torch's run over several), cut (" ...") where it is
    longer than `most` characters: at a space near the end, else where it must (a long path)."""
    line = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    if len(line) <= most:
        return line
    cut = line[:most - 4]
    space = cut.rfind(" ")
    return (cut[:space] if space >= len(cut) - 40 else cut) + " ..."


def tensor_memory(t, what, read):
    """read(t), where torch may refuse to hand out a tensor's memory (a functorch transform's wrapper
    has none of its own): a WanVAEError saying so."""
    try:
        return read(t)
    except (RuntimeError, NotImplementedError) as e:
        raise WanVAEError(f"{what}: torch does not hand out this tensor's memory ({first_line(e)}); pass a plain "
                          "tensor (x.detach().clone() outside the transform)") from None


def _torch_to_numpy(t, what):
    import torch

    t = dense_tensor(t, what)
    name = str(t.dtype).replace("torch.", "")
    if name not in FLOAT_TYPES and name != "float64":
        raise unsupported_dtype(what, name)
    if t.dtype == torch.bfloat16:
        return tensor_memory(t, what, lambda t: t.cpu().contiguous().view(torch.int16).numpy().view("V2"))
    return tensor_memory(t, what, lambda t: t.cpu().float().numpy() if t.dtype == torch.float64 else t.cpu().numpy())


def host_array(x, what):
    """A NumPy view (or copy where a conversion is unavoidable) of x in a dtype the core reads."""
    if _is_torch_tensor(x):
        return _torch_to_numpy(x, what)
    if isinstance(x, np.ma.MaskedArray):  # its array interface is the data alone: the mask would be lost
        raise WanVAEError(f"{what}: masked arrays are not supported; pass x.filled(value)")
    if isinstance(x, np.ndarray):
        if x.dtype.kind == "f" and not x.dtype.isnative:  # a big-endian .npy, say
            x = x.astype(x.dtype.newbyteorder("="))
        if x.dtype == np.float64:
            return x.astype(np.float32)
        bf16 = x.dtype.kind == "V" and x.dtype.itemsize == 2 or x.dtype.name == "bfloat16"
        if not bf16 and x.dtype not in (np.float32, np.float16):
            raise unsupported_dtype(what, x.dtype)
        if any(s < 0 or s % x.itemsize for s in x.strides):  # reversed (np.flip), or a packed record's field
            return np.ascontiguousarray(x)
        return x
    if hasattr(x, "__array_interface__") or hasattr(x, "__cuda_array_interface__"):
        return x
    raise WanVAEError(f"{what}: expected a NumPy array or torch tensor, got {type(x).__name__}")


def latents_4d(latents):
    """[z, T, h, w] from [z, T, h, w] or [1, z, T, h, w]. Raw array-interface objects pass as they are
    (the core checks their rank)."""
    shape = getattr(latents, "shape", None)
    if not isinstance(shape, tuple) or not hasattr(latents, "__getitem__"):
        return latents
    if len(shape) == 5:
        if shape[0] != 1:
            raise WanVAEError(f"latents: batch of {shape[0]} given; decode one video at a time ([1, z, T, h, w])")
        return latents[0]
    if len(shape) != 4:
        raise WanVAEError(f"latents must be [z, T, h, w] or [1, z, T, h, w]; got shape {list(shape)}")
    return latents


def _kind(values):
    """A value's kind for a message: its type, and for a sequence holding sequences (a ragged nesting), so."""
    nested = isinstance(values, (list, tuple)) and any(isinstance(v, (list, tuple, np.ndarray)) for v in values)
    return f"a {type(values).__name__} holding sequences" if nested else type(values).__name__


def _not_numbers(values):
    """What in `values` is no number (strings, None), which float64 would read as numbers or NaN, or ''."""
    raw = np.asarray(values)
    if raw.dtype.kind in "USV":
        return "strings"
    if raw.dtype.kind == "O" and any(v is None or isinstance(v, (str, bytes)) for v in raw.flat):
        return "None or strings"
    return ""


def as_float_list(values, what):
    if values is None:
        return None
    complex_error = WanVAEError(f"{what} must be real numbers, got complex ones")
    if _is_torch_tensor(values):
        values = dense_tensor(values, what)
        if values.is_complex():  # asked first: a conjugate view will not go to NumPy
            raise complex_error
        values = tensor_memory(values, what, lambda t: t.float().cpu().numpy())
    try:  # iscomplexobj converts too: a ragged nesting fails there
        complex_values = np.iscomplexobj(values)
        wrong = "" if complex_values else _not_numbers(values)
        arr = None if complex_values or wrong else np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise WanVAEError(f"{what} must be a sequence of numbers, got {_kind(values)}") from None
    if complex_values:
        raise complex_error
    if wrong:
        raise WanVAEError(f"{what} must be a sequence of numbers, got {wrong} among them")
    if not np.all(np.isfinite(arr)):
        raise WanVAEError(f"{what} contains NaN or Inf")
    if np.any(np.abs(arr) > np.finfo(np.float32).max):
        raise WanVAEError(f"{what} has a value beyond float32's range")
    return [float(v) for v in arr]
