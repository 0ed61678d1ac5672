"""The CUDA side of the Python layer: loading the backend's libraries, handing torch CUDA tensors to
the core zero-copy, device memory budgets and peak-memory sampling."""
import glob
import importlib.util
import numbers
import os
import sys
import sysconfig

from ._C import WanVAEError
from .arrays import dense_tensor, tensor_memory, torch_float_type, unsupported_dtype
from .sysmem import PeakSampler

# Share of the free device memory a CUDA decode plans to use when no max_memory is given.
DEVICE_BUDGET_SHARE = 0.9

_dll_dirs_added = False


def add_windows_dll_dirs():
    """Python 3.8+ on Windows no longer searches PATH for an extension's DLLs: point it at the CUDA
    toolkit and at the nvidia-* wheels (cuDNN, cuBLAS), as PyTorch does for its own; and put those
    folders on PATH too, as PyTorch also does: cuDNN loads its sub-libraries (cudnn_graph64_9.dll,
    cudnn_engines_*64_9.dll) itself, by name, from a process that may not have imported torch."""
    global _dll_dirs_added
    if sys.platform != "win32" or _dll_dirs_added:
        return
    _dll_dirs_added = True
    try:  # first, the folders of the DLLs the build linked against (CUDNN_PATH's, NVIDIA's installer's)
        from ._build_info import CUDA_DLL_DIRS as built_with
    except ImportError:  # a build of an older version
        built_with = []
    roots = [os.environ[v] for v in ("CUDA_PATH", "CUDA_HOME") if os.environ.get(v)]
    sites = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    for sp in sites:
        roots += glob.glob(os.path.join(glob.escape(sp), "nvidia", "*"))  # escaped: "ComfyUI [portable]"
    # bin/x86_64: the CUDA 13 wheels (nvidia/cu13/bin/x86_64/cublas64_13.dll); bin/x64: the toolkit's
    dirs = [os.path.join(r, *sub) for r in roots for sub in (("bin",), ("bin", "x86_64"), ("bin", "x64"))]
    # PyTorch's Windows wheels carry cuDNN and cuBLAS in torch/lib (added when torch is imported;
    # here for a process that imports us first), unless a cuDNN wheel is there: one cuDNN's DLLs,
    # not a mix of two installations' sub-libraries
    if not any(os.path.isdir(os.path.join(sp, "nvidia", "cudnn")) for sp in sites):
        dirs += [os.path.join(sp, "torch", "lib") for sp in sites]
    dirs = [d for d in dict.fromkeys(list(built_with) + dirs) if os.path.isdir(d)]
    for d in dirs:
        os.add_dll_directory(d)
    if dirs:
        os.environ["PATH"] = os.pathsep.join(dirs + [os.environ.get("PATH", "")])


def cuda_module():
    """wanvideo_vae._cuda, or None when it was not built or cannot load here. On Windows PyTorch, where
    installed, is imported first: its cuDNN DLLs are then the ones loaded (a DLL of a name already
    loaded is not loaded again), rather than ours first and PyTorch's sub-libraries beside them."""
    add_windows_dll_dirs()
    first_load = f"{__package__}._cuda" not in sys.modules
    if sys.platform == "win32" and first_load and "torch" not in sys.modules and importlib.util.find_spec("torch"):
        try:
            import torch  # noqa: F401
        except Exception:  # noqa: BLE001 - a broken torch must not keep the backend from loading
            pass
    try:
        from . import _cuda
    except ImportError:
        return None
    return _cuda


def device_index(device):
    """None, an int, 'cuda', 'cuda:N' or a torch.device -> a CUDA device index (-1: the current one)."""
    text = str(device)
    if device is None:
        index = -1
    elif isinstance(device, numbers.Integral) and not isinstance(device, bool):  # NumPy's ints too
        index = int(device)
    elif text == "cuda":  # the string, or a torch.device without an index (one with prints as cuda:N)
        index = -1
    elif text.startswith("cuda:") and text[5:].isdigit():
        index = int(text[5:])
    else:
        raise WanVAEError(f"device must be a CUDA device index, 'cuda', 'cuda:N' or a torch.device; got {device!r}")
    if not -1 <= index < 2**31:
        raise WanVAEError(f"device {device} is not a CUDA device index (0, 1, ...; -1: the current device)")
    return index


def _torch_if_loaded():
    return sys.modules.get("torch")


def resolve_device(device):
    """A device index; -1: the calling thread's current device, as torch sees it when it is loaded,
    else as the CUDA runtime does (-1 stays where the CUDA backend cannot load)."""
    if device >= 0:
        return device
    torch = _torch_if_loaded()
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.current_device()
    cuda = cuda_module()
    return cuda.current_device() if cuda is not None else device


def compute_capability(index):
    """(major, minor) of CUDA device `index` (-1: the current one) as our CUDA backend reads it (torch
    need not have CUDA); where it cannot (not loadable, no such device), a recent GPU is assumed and
    the decode says what is wrong."""
    cuda = cuda_module()
    if cuda is None:
        return (9, 0)
    try:
        return tuple(cuda.device_info(resolve_device(index))["capability"])
    except RuntimeError:
        return (9, 0)


def precision_for(precision, index):
    """bf16 where the GPU has bf16 arithmetic (compute capability 8.0+, Ampere on); before that (Turing
    and older) fp32, exact; fp16 would be faster there but can overflow."""
    return "fp32" if precision == "bf16" and compute_capability(index) < (8, 0) else precision


def _torch_cached_unused(device):
    torch = _torch_if_loaded()
    if torch is None or not torch.cuda.is_initialized() or device < 0:
        return 0
    return max(torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device), 0)


def device_budget(device, reserve=0):
    """(budget, free): bytes a decode on `device` may plan for, a share of the free memory plus what
    torch caches but does not use; and the share of the memory free right now; both less `reserve`
    (the call's own device memory beside the arena: a copy of host latents), at least 1."""
    cuda = cuda_module()
    if cuda is None:
        return 0, 0
    try:
        free, _ = cuda.mem_get_info(device)
    except RuntimeError as e:  # the CUDA runtime's error (a lost device): the decode's, as every other
        raise WanVAEError(str(e)) from None
    return (max(int((free + _torch_cached_unused(device)) * DEVICE_BUDGET_SHARE) - reserve, 1),
            max(int(free * DEVICE_BUDGET_SHARE) - reserve, 1))


def release_torch_cache_if_needed(device, budget, need, free_now, reserve=0):
    """The budget to plan with, once a plan that needs more than is free now has made room: torch
    hands its unused cache back to the driver (only then: emptying it costs torch later
    allocations), and the budget becomes the share of what is free after that, as torch may keep
    cached blocks it could not release (a block in part in use), which the first budget counted."""
    torch = _torch_if_loaded()
    if need <= free_now or torch is None or not torch.cuda.is_initialized():
        return budget
    torch.cuda.empty_cache()  # every device's cache: torch has no way to empty one device's alone
    return device_budget(device, reserve)[1]


class CudaArray:
    """A torch CUDA tensor seen through __cuda_array_interface__ version 3: zero-copy, any strides,
    bfloat16 as "<V2" (torch itself refuses to export bfloat16 before recent versions), and the
    stream the tensor is ready on (torch's current stream on its device)."""

    def __init__(self, tensor, what):
        import torch

        if tensor.dtype == torch.float64:  # converted, as host float64 is (on torch's current stream)
            tensor = tensor.float()
        tensor = dense_tensor(tensor, what)
        float_type = torch_float_type(tensor.dtype)
        if float_type is None:
            raise unsupported_dtype(what, tensor.dtype)
        typestr = float_type.typestr
        stream = torch.cuda.current_stream(tensor.device).cuda_stream
        self.tensor = tensor  # keeps the memory alive for as long as this object is
        self.device = tensor.device
        self.shape = tuple(tensor.shape)
        self.__cuda_array_interface__ = {
            "version": 3,
            "shape": self.shape,
            "typestr": typestr,
            "data": (tensor_memory(tensor, what, lambda t: t.data_ptr()), False),
            "strides": tuple(s * tensor.element_size() for s in tensor.stride()),
            "stream": stream if stream else 1,  # torch's default stream is the legacy one: CAI says 1
        }

    def __getitem__(self, index):
        return CudaArray(self.tensor[index], "latents")


class PeakDeviceMemory(PeakSampler):
    """Peak of (total - free) device memory over a block, sampled every millisecond, minus its value
    at entry: what the block added, whoever allocated it (torch's counters miss our allocations)."""

    period = 0.001

    def __init__(self, device=-1):
        self.device = resolve_device(device)  # the sampling thread has its own current device
        self.cuda = cuda_module()

    def read(self):
        free, total = self.cuda.mem_get_info(self.device)
        return total - free
