"""Build of wanvideo_vae.

- wanvideo_vae._C: the C core and the CPU backend, linked against OpenBLAS from the
  scipy-openblas32 wheel (the same BLAS SciPy ships). Always built.
- wanvideo_vae._cuda: the CUDA backend (cuda/), built when nvcc, cuDNN and cuBLAS are found:
  nvcc from CUDA_HOME / CUDA_PATH, PATH, the default install folder or the nvidia-cuda-nvcc wheel
  (CUDA 13 on); cuDNN and cuBLAS headers and libraries from CUDNN_PATH, the CUDA toolkit, the
  nvidia-cudnn-cu13 / -cu12 and nvidia-cublas(-cu12) wheels that PyTorch installs, or NVIDIA's cuDNN
  installer (Windows). At run time it finds those wheels' libraries beside itself in site-packages.
  On Windows the wheels ship DLLs without import libraries: the build makes them (MSVC's lib.exe)
  from CUDA_IMPORTS, the functions the backend calls.

WANVIDEO_CUDA=0 skips the CUDA backend, =1 requires it (a failure stops the build), unset (or
"auto") builds it when everything is found and otherwise says why not and goes on CPU-only; what
happened is written to wanvideo_vae/_build_info.py, which backends() reports (pip hides a build's
output). A CUDA module left by an earlier build never outlives a build without it.
WANVIDEO_CUDA_ARCHS: compute capabilities, default "75;80;86;89;90" plus PTX for the newest.
"""
import glob
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile

import numpy
import scipy_openblas32
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

WINDOWS = sys.platform == "win32"
CSRC = sorted(os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".c"))
CUDA_SOURCES = sorted(glob.glob(os.path.join("cuda", "*.cu")))
HEADERS = sorted(glob.glob(os.path.join("csrc", "*.h")))
CUDA_HEADERS = sorted(glob.glob(os.path.join("cuda", "*.h")) + glob.glob(os.path.join("cuda", "*.cuh")))
DEFAULT_ARCHS = "75;80;86;89;90"
CUDA_MODULE = "wanvideo_vae._cuda"


CUDA_MODES = {"0": "0", "false": "0", "no": "0", "off": "0", "1": "1", "true": "1", "yes": "1", "on": "1",
              "auto": "auto", "": "auto"}


def log(msg):
    print(f"wanvideo_vae build: {msg}", file=sys.stderr)


def warn(msg):
    log("warning: " + msg)
    CUDA_NOTE["warnings"].append(msg)


def cuda_mode():
    value = os.environ.get("WANVIDEO_CUDA", "auto")
    mode = CUDA_MODES.get(value.strip().lower())
    if mode is None:
        raise SystemExit(f"wanvideo_vae build: WANVIDEO_CUDA={value!r}: use 0 (skip the CUDA backend), 1 (require it) "
                         "or auto")
    return mode


# What _build_info.py records: why the CUDA backend is not in this build ("" when it is), and what
# in the build may keep it from running where PyTorch does (CUDA versions that differ).
CUDA_NOTE = {"why": "", "warnings": [], "dll_dirs": []}


def c_compile_args():
    if WINDOWS:
        return ["/O2", "/std:c11"]
    return ["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden", "-pthread"]


def rpath_args(dirs):
    if WINDOWS:
        return []
    origin = "@loader_path" if sys.platform == "darwin" else "$ORIGIN"
    return [f"-Wl,-rpath,{d.replace('$ORIGIN', origin)}" for d in dirs]


def core_extension():
    # At run time the package imports scipy_openblas32 first, which loads the library; the rpath
    # (site-packages/scipy_openblas32/lib beside site-packages/wanvideo_vae) is a second route, and
    # the wheel's own folder a third for a build in place, unless it is a throwaway build environment
    # (pip's, pypa/build's, uv's: a path that is gone, and in a world-writable folder, after the build)
    blas_dir = os.path.realpath(scipy_openblas32.get_lib_dir())
    throwaway = blas_dir.startswith(os.path.realpath(tempfile.gettempdir()) + os.sep) or \
        "build-env" in blas_dir or os.sep + "builds-v" in blas_dir  # uv: ~/.cache/uv/builds-v0/.tmpXXXX
    runpath = ["$ORIGIN/../scipy_openblas32/lib"] + ([] if throwaway else [blas_dir])
    return Extension(
        "wanvideo_vae._C",
        sources=CSRC,
        depends=HEADERS,
        include_dirs=["csrc", numpy.get_include(), scipy_openblas32.get_include_dir()],
        define_macros=[("WV_BLAS_SCIPY_PREFIX", "1")],
        library_dirs=[scipy_openblas32.get_lib_dir()],
        libraries=[scipy_openblas32.get_library()],
        extra_compile_args=c_compile_args(),
        extra_link_args=rpath_args(runpath) + ([] if WINDOWS else ["-pthread"]),  # the CPU backend's threads
    )


# ---- finding CUDA, cuDNN and cuBLAS -------------------------------------------------------------

# What the CUDA backend imports from cuDNN and cuBLAS, by exported name (cublasCreate is the header's
# macro for cublasCreate_v2). Windows import libraries are made from it; a test checks it against
# the symbols the Linux build imports.
CUDA_IMPORTS = {
    "cudnn": ["cudnnBackendCreateDescriptor", "cudnnBackendDestroyDescriptor", "cudnnBackendExecute",
              "cudnnBackendFinalize", "cudnnBackendGetAttribute", "cudnnBackendSetAttribute",
              "cudnnConvolutionBiasActivationForward", "cudnnConvolutionForward", "cudnnCreate",
              "cudnnCreateActivationDescriptor", "cudnnCreateConvolutionDescriptor",
              "cudnnCreateFilterDescriptor", "cudnnCreateTensorDescriptor", "cudnnDestroy",
              "cudnnDestroyActivationDescriptor", "cudnnDestroyConvolutionDescriptor", "cudnnDestroyFilterDescriptor",
              "cudnnDestroyTensorDescriptor",
              "cudnnGetConvolutionForwardAlgorithm_v7", "cudnnGetConvolutionForwardWorkspaceSize",
              "cudnnGetConvolutionNdForwardOutputDim",
              "cudnnGetErrorString", "cudnnGetVersion", "cudnnSetActivationDescriptor", "cudnnSetConvolutionMathType",
              "cudnnSetConvolutionNdDescriptor", "cudnnSetFilterNdDescriptor", "cudnnSetStream",
              "cudnnSetTensorNdDescriptor"],
    "cublas": ["cublasCreate_v2", "cublasDestroy_v2", "cublasGemmEx", "cublasGetProperty", "cublasGetStatusString",
               "cublasSetMathMode", "cublasSetStream_v2", "cublasSetWorkspace_v2"],
}


def find_nvcc():
    """CUDA_HOME / CUDA_PATH, then PATH, then the toolkit's default install folders, then the
    nvidia-cuda-nvcc wheel's (a toolkit installed keeps building as it did)."""
    exe_name = "nvcc.exe" if WINDOWS else "nvcc"
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root and os.path.isfile(os.path.join(root, "bin", exe_name)):
            return os.path.join(root, "bin", exe_name)
        if root:  # a toolkit asked for (another CUDA version, say) that is not there: not silently another
            warn(f"{var}={root} has no bin{os.sep}{exe_name}; looking on PATH, in the default folders and for the "
                 "nvidia-cuda-nvcc wheel")
    if shutil.which("nvcc"):
        return shutil.which("nvcc")
    if WINDOWS:
        versioned = glob.glob(r"C:\Program Files\NVIDIA GPU Computing Toolkit\CUDA\v*\bin\nvcc.exe")
        defaults = sorted(versioned, key=toolkit_version, reverse=True)
    else:
        versioned = glob.glob("/usr/local/cuda-*/bin/nvcc")
        defaults = ["/usr/local/cuda/bin/nvcc"] + sorted(versioned, key=toolkit_version, reverse=True)
    found = [exe for exe in defaults if os.path.isfile(exe)]
    return found[0] if found else wheel_nvcc(exe_name)


def wheel_nvcc(exe_name):
    """The nvcc of the nvidia-cuda-nvcc wheel, or None: from CUDA 13 on it lays out a toolkit in
    nvidia/cu13/ (bin/nvcc), where the runtime and CCCL wheels put their headers and libraries too
    (CUDA 12's wheel holds no nvcc). PyTorch's CUDA major first, then the newest; of those, the
    first environment's."""
    torch_cuda = torch_cuda_version()
    torch_major = int(torch_cuda.split(".")[0]) if torch_cuda else None
    best = None
    for sp in site_dirs():
        for nvcc in glob.glob(os.path.join(glob.escape(sp), "nvidia", "cu*", "bin", exe_name)):
            major = wheel_toolkit_major(os.path.dirname(os.path.dirname(nvcc)))
            key = (major == torch_major, major or 0)
            if major and (best is None or key > best[0]):
                best = (key, nvcc)
    return best[1] if best else None


def wheel_toolkit_major(toolkit):
    """13 for a toolkit the nvidia-* wheels lay out (site-packages/nvidia/cu13), else None."""
    found = re.fullmatch(r"cu(\d+)", os.path.basename(toolkit))
    return int(found.group(1)) if found and os.path.basename(os.path.dirname(toolkit)) == "nvidia" else None


def toolkit_version(path):
    """(13, 0) from .../cuda-13.0/bin/nvcc or ...\\CUDA\\v13.0\\bin\\nvcc.exe, so that 12.10 sorts above 12.9."""
    found = re.search(r"(?:cuda-|v)(\d+)\.(\d+)", path)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def cuda_root(nvcc):
    """The toolkit folder: nvcc may be a wrapper script on PATH, so ask nvcc itself where it lives."""
    try:
        out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True, text=True,
                             errors="replace", timeout=60)
        for line in (out.stdout + out.stderr).splitlines():
            if "TOP=" in line:
                top = line.split("TOP=", 1)[1].strip().strip('"')
                if os.path.isdir(os.path.join(top, "include")):
                    return os.path.abspath(top)
    except (OSError, subprocess.SubprocessError):
        pass
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def site_dirs():
    """Where pip puts the nvidia-* wheels: the target environment's site-packages. Under pip's build
    isolation sys.path is the build environment's, but sysconfig still names the target's; uv builds
    in an environment of its own, whose sysconfig names that one: the active one (VIRTUAL_ENV) too.
    Outside a virtual environment, last, the user's site-packages, where pip puts them with --user
    (or where it cannot write to the Python's own; build isolation hides it from sys.path)."""
    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:
        dirs += [os.path.join(venv, "Lib", "site-packages")] if WINDOWS else \
            glob.glob(os.path.join(glob.escape(venv), "lib", "python3*", "site-packages"))
    try:
        dirs += site.getsitepackages()
    except AttributeError:
        pass
    dirs += [p for p in sys.path if p.endswith("site-packages")]
    if sys.prefix == sys.base_prefix:
        try:
            dirs.append(site.getusersitepackages())
        except AttributeError:
            pass
    seen = []
    for d in dirs:
        if d and os.path.isdir(d) and d not in seen:
            seen.append(d)
    return seen


def conda_prefixes(toolkit):
    """A conda environment's own folder, where its packages put their headers and libraries (conda-forge's
    cudnn: include/cudnn*.h, lib/libcudnn*.so*): the one whose toolkit this is (conda-forge's nvcc names
    <env>/targets/<platform> as its toolkit, which holds the CUDA headers alone), then the active one."""
    prefixes = []
    if os.path.basename(os.path.dirname(os.path.normpath(toolkit))) == "targets":
        prefixes.append(os.path.dirname(os.path.dirname(os.path.normpath(toolkit))))
    if os.environ.get("CONDA_PREFIX") and os.environ["CONDA_PREFIX"] not in prefixes:
        prefixes.append(os.environ["CONDA_PREFIX"])
    return prefixes


def candidate_roots(env_var, wheel_dirs, toolkit, installed=()):
    """The folders to look in, in order: env_var's, the wheels', the toolkit, a conda environment's (see
    conda_prefixes), then `installed` (globs of a vendor installer's folders, newest first)."""
    roots = []
    if os.environ.get(env_var):
        roots.append(os.environ[env_var])
        if not os.path.isdir(os.environ[env_var]):
            warn(f"{env_var}={os.environ[env_var]} is not a folder; looking in the wheels and the toolkit")
    for sp in site_dirs():
        roots += [os.path.join(sp, "nvidia", d) for d in wheel_dirs]
    roots.append(toolkit)
    roots += conda_prefixes(toolkit)
    for pattern in installed:
        roots += sorted(glob.glob(pattern), key=toolkit_version, reverse=True)
    return roots


def cudnn_installer_folders():
    """NVIDIA's cuDNN installer for Windows: C:\\Program Files\\NVIDIA\\CUDNN\\v9.x."""
    if not WINDOWS:
        return []
    program_files = os.environ.get("ProgramFiles", r"C:\Program Files")
    return [os.path.join(glob.escape(program_files), "NVIDIA", "CUDNN", "v9*")]


def version_key(name):
    found = re.fullmatch(r"(\d+)\.(\d+)", name)
    return (int(found.group(1)), int(found.group(2))) if found else None


def library_layouts(root, cuda_major):
    """(include dir, library folders) a root may hold: include/ beside lib/ and bin/, and the layout of
    NVIDIA's cuDNN installer on Windows, a folder per CUDA version (include/12.9, lib/12.9/x64,
    bin/12.9), the toolkit's CUDA major first, then the newest."""
    yield os.path.join(root, "include"), [os.path.join(root, *sub) for sub in (
        ("lib",), ("lib64",), ("lib", "x64"), ("bin",), ("bin", "x86_64"), ("bin", "x64"))]
    try:
        versions = [v for v in os.listdir(os.path.join(root, "include")) if version_key(v)]
    except OSError:
        return
    for v in sorted(versions, key=lambda v: (version_key(v)[0] == cuda_major, version_key(v)), reverse=True):
        yield os.path.join(root, "include", v), [os.path.join(root, *sub) for sub in (
            ("lib", v, "x64"), ("lib", v), ("bin", v), ("bin", v, "x64"))]


def find_libraries(roots, names, cuda_major=None):
    """(include dir, library file) of every root holding the header and a library, in the roots'
    order, each root's library named first in names first."""
    header, libs = names
    for r in roots:
        for inc, folders in library_layouts(r, cuda_major):
            if not os.path.isfile(os.path.join(inc, header)):
                continue
            for lib in libs:
                for folder in folders:
                    hits = sorted(glob.glob(os.path.join(glob.escape(folder), lib)))
                    if hits:
                        yield inc, hits[-1]


def wheel_toolkit_header_gap(toolkit):
    """What a toolkit of wheels (nvidia-cuda-nvcc's, in nvidia/cu13) lacks for the build, with the wheel
    that has it, or None: it has the headers of the wheels installed beside it, nvidia-cuda-runtime's
    (PyTorch's CUDA 13 builds bring it) and nvidia-cuda-cccl's <nv/target>, which cuda_fp16.h includes
    from CUDA 12 on (include/cccl, where the CCCL wheel also puts it, counts: nvcc searches it). Other
    toolkits keep their headers where their nvcc knows (conda's in targets/<platform>/include)."""
    inc = os.path.join(toolkit, "include")
    if not os.path.isfile(os.path.join(inc, "cuda_runtime_api.h")):
        return f"the CUDA runtime's headers are not in {inc} (for nvcc from the wheel: pip install nvidia-cuda-runtime)"
    if "<nv/target>" in toolkit_header(toolkit, "cuda_fp16.h") and not any(os.path.isfile(os.path.join(inc, *sub, "nv", "target")) for sub in ((), ("cccl",))):
        return (f"the CUDA headers in {inc} include <nv/target>, which is not there (for nvcc from the wheel: "
                "pip install nvidia-cuda-cccl)")
    return None


def toolkit_header(toolkit, name):
    """The text of one of the toolkit's headers ("" where it has none)."""
    try:
        # the headers hold UTF-8 punctuation, which a Windows code page (cp949, cp950) cannot decode
        with open(os.path.join(toolkit, "include", name), encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def toolkit_cuda_version(toolkit):
    """(major, minor) of the toolkit's runtime (CUDART_VERSION in its header), or None."""
    found = re.search(r"#define\s+CUDART_VERSION\s+(\d+)", toolkit_header(toolkit, "cuda_runtime_api.h"))
    return (int(found.group(1)) // 1000, int(found.group(1)) % 1000 // 10) if found else None


def library_cuda_major(lib, toolkit, toolkit_major):
    """The CUDA major a cuDNN, cuBLAS or CUDA runtime library is built for, where it shows: a versioned
    name (libcublas.so.12, cublas64_13.dll, libcudart.so.13), the toolkit's own, the name of the one nvidia-* wheel that
    can own it (nvidia_cudnn_cu12-9.1.0.70.dist-info beside nvidia/cudnn/); None where unknown."""
    found = re.match(r"(?:libcublas\.so\.|cublas64_|libcudart\.so\.|cudart64_)(\d+)", os.path.basename(lib))
    if found:
        return int(found.group(1))
    if os.path.realpath(lib).startswith(os.path.realpath(toolkit) + os.sep):
        return toolkit_major
    versioned = [version_key(part) for part in os.path.dirname(lib).split(os.sep)[-2:] if version_key(part)]
    if versioned:  # NVIDIA's cuDNN installer: lib\12.9\x64\cudnn.lib, bin\12.9\cudnn64_9.dll
        return versioned[-1][0]
    parts = os.path.realpath(lib).split(os.sep)
    if "nvidia" not in parts:
        return None
    at = len(parts) - 1 - parts[::-1].index("nvidia")
    site_packages, package = os.sep.join(parts[:at]), parts[at + 1]
    wheels = {int(m.group(1)) for d in os.listdir(site_packages or os.sep)
              for m in [re.match(rf"nvidia_{re.escape(package)}_cu(\d+)-.*\.dist-info$", d)] if m}
    return wheels.pop() if len(wheels) == 1 else None


def pick_library(what, roots, names, toolkit, cuda_major, match_toolkit, accept=None):
    """(include dir, library) of the first library found (whose include dir `accept` takes, where given),
    or, with match_toolkit, of the first built for the toolkit's CUDA major (or whose major does not
    show) where there is one; a warning where the one taken is of another major (it needs that CUDA's
    driver too). (None, None): none found.

    cuDNN is not matched: every build's library is libcudnn.so.9 (cudnn64_9.dll), so in a process
    that has imported PyTorch the one loaded is PyTorch's, the wheel's, whatever was linked; the
    build takes that one's headers. cuBLAS's names carry the major (libcublas.so.12 / .13): two load
    side by side, and the toolkit's own runtime goes with its own major."""
    found = [(inc, lib) for inc, lib in find_libraries(roots, names, cuda_major) if accept is None or accept(inc)]
    if not found:
        return None, None
    majors = [library_cuda_major(lib, toolkit, cuda_major) for _, lib in found]
    take = 0
    if match_toolkit:
        take = next((i for i, major in enumerate(majors) if cuda_major is None or major in (None, cuda_major)), 0)
    if cuda_major is not None and majors[take] not in (None, cuda_major):
        # not "install the cuDNN of the toolkit's CUDA": both cuDNN wheels fill nvidia/cudnn, PyTorch's own
        warn(f"{what} {found[take][1]} is built for CUDA {majors[take]} and the toolkit is CUDA {cuda_major}: the "
             f"CUDA backend will need a driver for CUDA {max(majors[take], cuda_major)}; a CUDA {majors[take]} "
             "toolkit (CUDA_HOME) matches it")
    return found[take]


CUDNN_MIN_MAJOR = 9  # cuda/wv_backend_cuda.cu refuses to compile with an older one


def cudnn_major(inc):
    """The cuDNN major its headers in `inc` declare (CUDNN_MAJOR: cudnn_version.h from cuDNN 8 on, cudnn.h
    before), or None where they do not say."""
    for name in ("cudnn_version.h", "cudnn.h"):
        try:
            with open(os.path.join(inc, name), encoding="utf-8", errors="replace") as f:
                found = re.search(r"#define\s+CUDNN_MAJOR\s+(\d+)", f.read())
        except OSError:
            continue
        if found:
            return int(found.group(1))
    return None


def recent_cudnn(inc):
    """Whether the cuDNN headers in `inc` are of a cuDNN the backend builds with (or do not say)."""
    major = cudnn_major(inc)
    return major is None or major >= CUDNN_MIN_MAJOR


def torch_cuda_version():
    """The CUDA version the environment's PyTorch is built for ("12.8"), read from torch/version.py
    without importing torch (under build isolation it is not importable); None without one."""
    for sp in site_dirs():
        try:
            with open(os.path.join(sp, "torch", "version.py"), encoding="utf-8", errors="replace") as f:
                found = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([0-9.]+)['\"]", f.read(), re.M)
        except OSError:
            continue
        return found.group(1) if found else None
    return None


def check_torch_cuda(cuda_version):
    """A toolkit of a newer CUDA major than PyTorch's makes a backend that needs a newer driver than
    PyTorch does (an older one runs on PyTorch's driver)."""
    torch_cuda = torch_cuda_version()
    torch_major = int(torch_cuda.split(".")[0]) if torch_cuda else None
    if torch_major is None or not cuda_version or cuda_version[0] <= torch_major:
        return
    toolkit = "%d.%d" % cuda_version
    warn(f"PyTorch here is built for CUDA {torch_cuda} and the toolkit is CUDA {toolkit}: the CUDA backend "
         f"needs a driver for CUDA {toolkit}, newer than PyTorch needs (backends() says when it is not); a "
         f"CUDA {torch_major} toolkit (CUDA_HOME) matches PyTorch")


def cuda_config():
    """Everything the CUDA build needs, or None with the reason logged."""
    mode = cuda_mode()
    if mode == "0":
        return missing(mode, "skipped (WANVIDEO_CUDA=0)")
    if not CUDA_SOURCES:
        return missing(mode, "cuda/ is not in this source tree")
    # the user's settings first: a mistyped one is named whatever else the build lacks
    arch_text = os.environ.get("WANVIDEO_CUDA_ARCHS", "")
    archs, bad = cuda_archs(arch_text)
    if bad is not None:
        return missing(mode, f"WANVIDEO_CUDA_ARCHS has {bad!r}, not a compute capability: give them as 86;90 "
                             "(or sm_86, 8.6)")
    nvcc = find_nvcc()
    if not nvcc:
        return missing(mode, "nvcc not found (set CUDA_HOME or put nvcc on PATH; beside a PyTorch for CUDA 13, "
                             "pip install nvidia-cuda-nvcc nvidia-cuda-cccl brings one)")
    toolkit = cuda_root(nvcc)
    gap = wheel_toolkit_major(toolkit) and wheel_toolkit_header_gap(toolkit)
    if gap:
        return missing(mode, gap)
    cuda_version = toolkit_cuda_version(toolkit)
    cuda_major = cuda_version[0] if cuda_version else None
    so = not WINDOWS
    # a cuDNN 8 copied into the toolkit (NVIDIA's old instructions) is passed over for a cuDNN 9 further on
    cudnn_roots = candidate_roots("CUDNN_PATH", ["cudnn"], toolkit, cudnn_installer_folders())
    cudnn_names = ("cudnn.h", ["libcudnn.so.9", "libcudnn.so"] if so else ["cudnn.lib", "cudnn64_9.dll"])
    cudnn_inc, cudnn_lib = pick_library("cuDNN", cudnn_roots, cudnn_names, toolkit, cuda_major, match_toolkit=False,
                                        accept=recent_cudnn)
    if not cudnn_inc:
        wheel = f"nvidia-cudnn-cu{cuda_major}" if cuda_major else "nvidia-cudnn-cu13 (-cu12 for a CUDA 12 toolkit)"
        old = [inc for inc, _ in find_libraries(cudnn_roots, cudnn_names, cuda_major)]
        if old:
            return missing(mode, f"cuDNN {CUDNN_MIN_MAJOR} or newer not found: the one in {old[0]} is cuDNN "
                                 f"{cudnn_major(old[0])} (pip install {wheel}, or set CUDNN_PATH)")
        return missing(mode, f"cuDNN not found (pip install {wheel}, or set CUDNN_PATH)")
    cublas_inc, cublas_lib = pick_library(
        "cuBLAS", candidate_roots("CUBLAS_PATH", ["cu13", "cublas"], toolkit),
        ("cublas_v2.h", ["libcublas.so.13", "libcublas.so.12", "libcublas.so"] if so
                        else ["cublas.lib", "cublas64_13.dll", "cublas64_12.dll"]), toolkit, cuda_major,
        match_toolkit=not os.environ.get("CUBLAS_PATH"))  # one named is taken, with a warning where it does not match
    if not cublas_inc:
        return missing(mode, "cuBLAS not found (pip install nvidia-cublas, or a CUDA toolkit that has it)")
    lib64 = os.path.join(toolkit, "lib", "x64") if WINDOWS else os.path.join(toolkit, "lib64")
    if not os.path.isdir(lib64):
        lib64 = os.path.join(toolkit, "lib")
    cudart = find_cudart(toolkit, lib64, cuda_major)
    if not cudart:
        of = f"CUDA {cuda_major}'s runtime library" if cuda_major else "the CUDA runtime library"
        return missing(mode, f"{of} (cudart) was found neither in the toolkit nor in a wheel")
    check_torch_cuda(cuda_version)
    archs = archs_for_machine(archs, nvcc, chosen=bool(re.sub(r"[;,\s]", "", arch_text)))
    if WINDOWS:
        CUDA_NOTE["dll_dirs"] = [d for d in (dll_folder(cudnn_lib, "cudnn64_*.dll"),
                                             dll_folder(cublas_lib, "cublas64_*.dll")) if d]
    log(f"CUDA backend: nvcc {nvcc}, cuDNN {cudnn_lib}, cuBLAS {cublas_lib}, archs {archs}")
    return {"nvcc": nvcc, "toolkit": toolkit, "lib64": lib64, "cudart": cudart, "cudnn_inc": cudnn_inc,
            "cudnn_lib": cudnn_lib, "cublas_inc": cublas_inc, "cublas_lib": cublas_lib, "archs": archs,
            "cuda_version": cuda_version, "required": mode == "1"}


def cuda_archs(text):
    """(compute capabilities as nvcc's numbers, oldest first; the first entry that is none, or None) of
    WANVIDEO_CUDA_ARCHS: "86;90", split at ; , or spaces, each also as sm_90, compute_90 or 9.0 (with
    +PTX: TORCH_CUDA_ARCH_LIST's form; the newest gets PTX anyway); none: DEFAULT_ARCHS."""
    archs = []
    for entry in [e for e in re.split(r"[;,\s]+", text) if e] or DEFAULT_ARCHS.split(";"):
        arch = re.sub(r"^(sm_|compute_)|\+ptx$", "", entry.lower())
        arch = re.sub(r"^(\d+)\.(\d)", r"\1\2", arch)
        if not re.fullmatch(r"\d{2,3}[af]?", arch):
            return [], entry
        archs.append(arch)
    return sorted(set(archs), key=lambda a: (arch_number(a), a)), None


def arch_number(arch):
    return int(re.match(r"\d+", arch).group())


def runs_natively(archs, cap):
    """Whether archs hold a binary for a GPU of compute capability cap: one of its major and no newer minor."""
    major, minor = divmod(int(cap), 10)
    return any(n // 10 == major and n % 10 <= minor for n in (arch_number(a) for a in archs))


def runs_on(archs, cap):
    """Whether code built for archs (oldest first, the newest also as PTX) runs on a GPU of compute
    capability cap ("61"): a binary of its major and no newer minor, or the PTX, which a newer GPU's
    driver compiles."""
    return int(cap) >= arch_number(archs[-1]) or runs_natively(archs, cap)


def machine_gpu_caps():
    """Compute capabilities of this machine's NVIDIA GPUs as nvcc writes them ("61"), from nvidia-smi;
    none without one (or with a driver too old to say)."""
    smi = shutil.which("nvidia-smi")
    try:
        done = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                              text=True, errors="replace", timeout=60) if smi else None
    except (OSError, subprocess.SubprocessError):
        done = None
    caps = {line.strip() for line in done.stdout.splitlines()} if done and done.returncode == 0 else set()
    return sorted((c.replace(".", "") for c in caps if re.fullmatch(r"\d+\.\d", c)), key=int)


def nvcc_caps(nvcc):
    """The compute capabilities nvcc builds for ("75", ...), from --list-gpu-arch; empty if it cannot say."""
    try:
        done = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, errors="replace",
                              timeout=60)
    except (OSError, subprocess.SubprocessError):
        return set()
    return set(re.findall(r"compute_(\d+)\b", done.stdout)) if done.returncode == 0 else set()


def archs_for_machine(archs, nvcc, chosen):
    """archs, plus the compute capability of each GPU of this machine they hold no binary for, as PyTorch's
    extensions build for the GPUs they find, where nvcc builds for it and the user did not choose the archs
    (WANVIDEO_CUDA_ARCHS): one they would not run on at all (a P100's 6.0, a V100's 7.0), and one newer
    than the newest arch (Blackwell's 12.0), which would run the PTX its driver compiles at first use. A
    warning where such a GPU is left with nothing to run."""
    buildable = None
    for cap in [c for c in machine_gpu_caps() if not runs_natively(archs, c)]:
        shown = f"{cap[:-1]}.{cap[-1]}"
        if buildable is None and not chosen:
            buildable = nvcc_caps(nvcc)
        if not chosen and cap in buildable:
            log(f"this machine's GPU of compute capability {shown} is added to the archs")
            archs = cuda_archs(";".join(archs + [cap]))[0]
        elif not runs_on(archs, cap):  # else the PTX runs on it
            warn(f"WANVIDEO_CUDA_ARCHS has no code for this machine's GPU of compute capability {shown}: the CUDA "
                 f"backend will not run on it (add {cap})" if chosen else
                 f"this CUDA toolkit does not build for this machine's GPU of compute capability {shown}: the "
                 f"CUDA backend will not run on it (a CUDA 12 toolkit builds for 5.0 and newer: set CUDA_HOME)")
    return archs


def dll_folder(lib, pattern):
    """Windows: the folder of the DLL behind an import library (or the DLL's own), which the package
    adds to the DLL search path at import: bin beside lib, in the same CUDA version's folder where the
    layout has them (NVIDIA's cuDNN installer: lib\\12.9\\x64\\cudnn.lib, bin\\12.9\\cudnn64_9.dll)."""
    if lib.lower().endswith(".dll"):
        return os.path.dirname(os.path.abspath(lib))
    folder = os.path.dirname(os.path.abspath(lib))
    versions = [part for part in folder.split(os.sep) if version_key(part)]
    for _ in range(3):
        folder = os.path.dirname(folder)
        hits = sorted(glob.glob(os.path.join(glob.escape(folder), "bin", "**", pattern), recursive=True))
        same = [h for h in hits if not versions or versions[-1] in h.split(os.sep)]
        if same or hits:
            return os.path.dirname((same or hits)[-1])
    return None


def find_cudart(toolkit, lib64, cuda_major):
    """The static runtime of the toolkit (no run-time dependency), else a shared one of the toolkit's
    CUDA major: the toolkit's own, or the nvidia-cuda-runtime wheel's (an nvcc installed from pip comes
    without the static library). One of another major is never taken, only named: its structures are
    not those of the headers compiled against (cudaDeviceProp changed in CUDA 13), and a wheel of the
    CUDA PyTorch had before an upgrade stays installed. None where there is none."""
    static = os.path.join(lib64, "cudart_static.lib" if WINDOWS else "libcudart_static.a")
    if os.path.isfile(static):
        return static
    # the wheel's: nvidia/cuda_runtime/lib/x64/cudart_static.lib (Windows), nvidia/*/lib/libcudart.so.12
    wheel_libs = [("lib", "x64", "cudart_static.lib"), ("lib", "cudart_static.lib")] if WINDOWS else \
        [("lib", "libcudart.so.*")]
    hits = [] if WINDOWS else sorted(glob.glob(os.path.join(glob.escape(lib64), "libcudart.so.*")))
    for sp in site_dirs():
        for sub in wheel_libs:
            hits += sorted(glob.glob(os.path.join(glob.escape(sp), "nvidia", "*", *sub)))
    majors = [library_cuda_major(hit, toolkit, cuda_major) for hit in hits]
    fits = [hit for hit, major in zip(hits, majors) if cuda_major is None or major in (None, cuda_major)]
    if not fits and hits:
        warn(f"the CUDA runtime libraries found are for another CUDA than the toolkit's {cuda_major} ("
             + ", ".join(hits) + ")")
    return fits[0] if fits else None


def cuda_include_order(cfg):
    """The include folders of the CUDA build, in order. cuDNN's first where it holds no CUDA runtime
    headers (the wheel's holds cudnn*.h alone), so that the cudnn.h of the cuDNN linked is the one
    compiled, not one copied into the toolkit (NVIDIA's old instructions: a cuDNN 8 there); then the
    toolkit's own, before cuBLAS's (a wheel's nvidia/cu13/include may hold runtime headers of another
    version)."""
    toolkit = os.path.join(cfg["toolkit"], "include")
    first = [] if os.path.isfile(os.path.join(cfg["cudnn_inc"], "cuda_runtime_api.h")) else [cfg["cudnn_inc"]]
    ordered = []
    for folder in first + [toolkit, cfg["cudnn_inc"], cfg["cublas_inc"]]:
        if os.path.normcase(os.path.abspath(folder)) not in (os.path.normcase(os.path.abspath(f)) for f in ordered):
            ordered.append(folder)
    return ordered


# Commands that compile the extensions; the others (sdist, egg_info, dist_info) only describe the package.
BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "install", "develop"}


def missing(mode, why):
    if mode == "1" and BUILD_COMMANDS & set(sys.argv[1:]):  # making an sdist needs no CUDA
        raise SystemExit(f"wanvideo_vae build: WANVIDEO_CUDA=1 but {why}")
    log(f"building CPU-only: {why}")
    CUDA_NOTE["why"] = why
    return None


def cuda_extension(cfg):
    lib_dirs = [os.path.dirname(cfg["cudnn_lib"]), os.path.dirname(cfg["cublas_lib"])]
    if WINDOWS:
        libs, link = ["cudart_static", "cudnn", "cublas"], []
        lib_dirs.append(os.path.dirname(cfg["cudart"]))
    else:
        libs = ["dl", "rt", "pthread", "stdc++"]
        # the wheels ship versioned libraries only (libcudnn.so.9): link them by path
        link = [cfg["cudart"], cfg["cudnn_lib"], cfg["cublas_lib"]] + rpath_args(
            ["$ORIGIN/../nvidia/cudnn/lib", "$ORIGIN/../nvidia/cu13/lib", "$ORIGIN/../nvidia/cublas/lib",
             "$ORIGIN/../nvidia/cuda_runtime/lib"] + lib_dirs + [os.path.dirname(cfg["cudart"])])
        lib_dirs = [cfg["lib64"]]
    ext = Extension(
        CUDA_MODULE,
        sources=["cuda/module_cuda.c", "csrc/wv_util.c"],
        depends=CUDA_SOURCES + CUDA_HEADERS + HEADERS,  # the nvcc objects: relink when they change
        include_dirs=["csrc", "cuda", os.path.join(cfg["toolkit"], "include")],
        library_dirs=lib_dirs,
        libraries=libs,
        extra_compile_args=c_compile_args(),
        extra_link_args=link,
    )
    ext.cuda = cfg
    return ext


class BuildExt(build_ext):
    """Compiles cuda/*.cu with nvcc for the CUDA extension; builds the rest as usual. Where the CUDA
    backend is not built, no CUDA module of an earlier build stays behind (it would load beside a new
    core), and an editable install copies only what was built; _build_info.py says what happened."""

    def run(self):
        super().run()  # builds into build_lib, then copies to the sources for an in-place or editable build
        package_dirs = [os.path.join(self.build_lib, "wanvideo_vae")]
        if self.inplace:
            package_dirs.append(self.get_finalized_command("build_py").get_package_dir("wanvideo_vae"))
        cuda_file = os.path.basename(self.get_ext_filename(CUDA_MODULE))
        for folder in package_dirs:
            if CUDA_NOTE["why"]:
                self.remove_stale(os.path.join(folder, cuda_file))
            self.write_build_info(os.path.join(folder, "_build_info.py"))

    def build_extensions(self):
        super().build_extensions()
        if CUDA_NOTE["why"]:  # the CUDA module failed to build: not one to copy
            self.extensions = [ext for ext in self.extensions if ext.name != CUDA_MODULE]

    @staticmethod
    def remove_stale(path):
        if os.path.isfile(path):
            log(f"removing {path}, left by an earlier build")
            os.remove(path)

    @staticmethod
    def write_build_info(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:  # a path in a message may be any text
            f.write("# Written by setup.py: what the build of this copy of the package did.\n"
                    f"CUDA_NOT_BUILT = {CUDA_NOTE['why']!r}  # why the CUDA backend was not built; '' when it was\n"
                    "# what may keep the CUDA backend from running where PyTorch does\n"
                    f"CUDA_BUILD_WARNINGS = {[] if CUDA_NOTE['why'] else CUDA_NOTE['warnings']!r}\n"
                    "# Windows: the folders of the cuDNN and cuBLAS DLLs it was linked against, searched first\n"
                    f"CUDA_DLL_DIRS = {[] if CUDA_NOTE['why'] else CUDA_NOTE['dll_dirs']!r}\n")

    def build_extension(self, ext):
        cfg = getattr(ext, "cuda", None)
        if cfg is None:
            ext.depends = list(ext.depends) + [self.environment_stamp()]
            return super().build_extension(ext)
        try:
            ext.extra_objects = [self.nvcc_compile(cfg, src) for src in CUDA_SOURCES]
            # relinked whenever they are newer: other archs or another toolkit change no source
            ext.depends = list(ext.depends) + ext.extra_objects
            for key, name in (("cudnn_lib", "cudnn"), ("cublas_lib", "cublas")):
                if cfg[key].lower().endswith(".dll"):  # a wheel's DLL alone (Windows)
                    self.import_library(cfg[key], name)
                    if self.build_temp not in ext.library_dirs:
                        ext.library_dirs.insert(0, self.build_temp)
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001 - any compiler failure
            what = f"nvcc exited with status {e.returncode}" if isinstance(e, subprocess.CalledProcessError) else str(e)
            if cfg["required"]:
                raise SystemExit(f"wanvideo_vae build: WANVIDEO_CUDA=1 but the CUDA backend failed to build ({what}; "
                                 "the compiler's messages are above)") from None
            log(f"the CUDA backend failed to build ({what}); building CPU-only")
            CUDA_NOTE["why"] = f"it failed to build ({what}; `pip install -v .` shows the compiler's messages)"

    def environment_stamp(self):
        """A file in build_temp naming the NumPy and BLAS the core is compiled against, written anew (so
        newer than the module an earlier build left) when they change: the sources have not, and
        setuptools rebuilds only what is older than its sources (a NumPy 1.x module does not load
        under NumPy 2, and its rpath named the earlier BLAS)."""
        key = (f"numpy {numpy.__version__} {numpy.get_include()}\nscipy-openblas32 "
               f"{getattr(scipy_openblas32, '__version__', '?')} {scipy_openblas32.get_lib_dir()}\n")
        path = os.path.join(self.build_temp, "core_environment.txt")
        try:
            with open(path, encoding="utf-8") as f:
                if f.read() == key:
                    return path
        except OSError:
            pass
        os.makedirs(self.build_temp, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(key)
        return path

    def import_library(self, dll, name):
        """build_temp/<name>.lib for a DLL shipped without one, from the functions we call (MSVC)."""
        os.makedirs(self.build_temp, exist_ok=True)
        if not getattr(self.compiler, "initialized", True):
            self.compiler.initialize()
        definition = os.path.join(self.build_temp, name + ".def")
        with open(definition, "w", encoding="ascii") as f:
            f.write(f"LIBRARY {os.path.basename(dll)}\nEXPORTS\n" + "".join(f"    {s}\n" for s in CUDA_IMPORTS[name]))
        run = getattr(self.compiler, "call", None) or self.compiler.spawn  # call: setuptools >= 75 (VS's PATH)
        run([self.compiler.lib, "/nologo", "/machine:x64", "/def:" + definition,
             "/out:" + os.path.join(self.build_temp, name + ".lib")])

    def nvcc_compile(self, cfg, src):
        os.makedirs(self.build_temp, exist_ok=True)
        obj = os.path.join(self.build_temp, os.path.basename(src) + (".obj" if WINDOWS else ".o"))
        gencode = []
        for a in cfg["archs"]:
            gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
        newest = cfg["archs"][-1]
        gencode += ["-gencode", f"arch=compute_{newest},code=compute_{newest}"]
        # the targets compiled side by side, up to a thread a core (nvcc 11.2 on)
        threads = ["--threads", "0"] if (cfg["cuda_version"] or (0, 0)) >= (11, 2) else []
        # /MD: the C runtime setuptools links the C objects with (cl's default, /MT, would be a second)
        host = ["-Xcompiler", "/MD,/O2,/EHsc"] if WINDOWS else ["-Xcompiler", "-fPIC,-fvisibility=hidden,-Wall"]
        cmd = [cfg["nvcc"], "-c", src, "-o", obj, "-O3", "-std=c++17", "-Icsrc", "-Icuda"]
        cmd += ["-I" + folder for folder in cuda_include_order(cfg)]
        env, ccbin = self.msvc_for_nvcc()
        self.run_nvcc(cmd + ccbin + host + gencode + threads, env)
        return obj

    @staticmethod
    def run_nvcc(cmd, env):
        """Runs nvcc, its messages passed on. Where it refuses the host compiler's version (a Visual Studio
        newer than the toolkit, which setuptools picks as the newest installed; a gcc newer than it), once
        more with -allow-unsupported-compiler, as nvcc's message offers, and a warning backends() reports."""
        log(" ".join(cmd))
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, errors="replace")
        said = done.stdout + done.stderr
        if said.strip():
            print(said, file=sys.stderr)
        flag = "-allow-unsupported-compiler"
        if done.returncode and flag in said and flag not in cmd:
            version = next((line.strip() for line in said.splitlines() if "unsupported" in line), "")
            warn(f"nvcc does not support this host compiler ({version[:200]}): built with {flag}")
            return BuildExt.run_nvcc(cmd + [flag], env)
        if done.returncode:
            raise subprocess.CalledProcessError(done.returncode, cmd, done.stdout, done.stderr)

    def msvc_for_nvcc(self):
        """Windows: (environment, -ccbin) for nvcc, whose host compiler is cl.exe: the Visual Studio setup
        setuptools found (its PATH, INCLUDE and LIB), so no Developer Prompt is needed. Elsewhere (None, []).
        setuptools keeps Visual Studio's and the SDK's folders on the compiler's class (the instance's
        are the build's own, Python's headers): INCLUDE and LIB take both."""
        if not WINDOWS:
            return None, []
        if not getattr(self.compiler, "initialized", True):
            self.compiler.initialize()
        env = dict(os.environ)
        paths = getattr(self.compiler, "_paths", "")
        if paths:
            env["PATH"] = paths
        for var, name in (("INCLUDE", "include_dirs"), ("LIB", "library_dirs")):
            dirs = list(dict.fromkeys(list(getattr(type(self.compiler), name, None) or []) +
                                      list(getattr(self.compiler, name, None) or [])))
            if not env.get(var) and dirs:  # a Developer Prompt's own setting stays
                env[var] = os.pathsep.join(dirs)
        cc = getattr(self.compiler, "cc", None)
        return env, (["-ccbin", os.path.dirname(cc)] if cc and os.path.isabs(cc) else [])


def extensions():
    exts = [core_extension()]
    cfg = cuda_config()
    if cfg:
        exts.append(cuda_extension(cfg))
    return exts


if __name__ == "__main__":  # setuptools runs this file as __main__; tests/c/backend_ops.sh imports it
    setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
