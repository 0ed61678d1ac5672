"""The build (setup.py) in a scratch copy of the sources: a CUDA module of an earlier build never
outlives a build without one, and the reason the CUDA backend was left out is recorded for backends()."""
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import types

import pytest

from helpers import REPO, load_install_script, load_setup_script, scratch_copy

SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")


def build_in_place(src, **env):
    return subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=src, capture_output=True,
                          text=True, env=dict(os.environ, **env), timeout=600)


def recorded(src, name):
    scope = {}
    exec((src / "wanvideo_vae" / "_build_info.py").read_text(), scope)
    return scope[name]


def recorded_reason(src):
    return recorded(src, "CUDA_NOT_BUILT")


def import_in(folder):
    return subprocess.run([sys.executable, "-c", "import wanvideo_vae"], cwd=folder, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, timeout=120)


def test_the_unbuilt_sources_say_so_when_imported(tmp_path):
    """`python -m wanvideo_vae` in the repository's root imports its sources, not the installed package."""
    shutil.copytree(os.path.join(REPO, "wanvideo_vae"), tmp_path / "wanvideo_vae",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    run = import_in(tmp_path)
    assert run.returncode == 1
    assert (f"ImportError: wanvideo_vae: the compiled module _C is not in {tmp_path / 'wanvideo_vae'}, an unbuilt "
            "source folder (run from another folder") in run.stderr
    (tmp_path / "wanvideo_vae" / ("_C" + SUFFIX)).write_bytes(b"not a library")  # built, but broken: its own error
    run = import_in(tmp_path)
    assert run.returncode == 1 and "ImportError" in run.stderr and "unbuilt source folder" not in run.stderr


def test_a_build_without_cuda_removes_an_earlier_cuda_module(tmp_path):
    src = scratch_copy(tmp_path)
    stale = src / "wanvideo_vae" / ("_cuda" + SUFFIX)
    stale.write_bytes(b"an earlier build's CUDA module")
    r = build_in_place(src, WANVIDEO_CUDA="0")
    assert r.returncode == 0, r.stderr
    assert (src / "wanvideo_vae" / ("_C" + SUFFIX)).exists() and not stale.exists()
    assert recorded_reason(src) == "skipped (WANVIDEO_CUDA=0)"
    assert recorded(src, "CUDA_BUILD_WARNINGS") == []
    assert not list((src / "build").rglob("_cuda" + SUFFIX))


def test_a_failed_cuda_build_goes_on_cpu_only_and_says_why(setup_module, tmp_path, monkeypatch):
    monkeypatch.setenv("WANVIDEO_CUDA", "auto")
    if not setup_module.cuda_config():
        pytest.skip("setup.py finds no CUDA toolchain (nvcc, cuDNN, cuBLAS) to try")
    src = scratch_copy(tmp_path)
    r = build_in_place(src, WANVIDEO_CUDA="auto", WANVIDEO_CUDA_ARCHS="11")  # an architecture nvcc refuses
    assert r.returncode == 0, r.stderr
    assert (src / "wanvideo_vae" / ("_C" + SUFFIX)).exists()
    assert not (src / "wanvideo_vae" / ("_cuda" + SUFFIX)).exists()
    assert recorded_reason(src).startswith("it failed to build (nvcc exited with status")


def test_an_unknown_cuda_mode_is_refused(tmp_path):
    r = build_in_place(scratch_copy(tmp_path), WANVIDEO_CUDA="maybe")
    assert r.returncode != 0 and "WANVIDEO_CUDA='maybe'" in r.stderr


# ---- CUDA versions: a toolkit, cuDNN or cuBLAS of another CUDA major than PyTorch's ----------------

@pytest.fixture
def setup_module(monkeypatch):
    monkeypatch.chdir(REPO)  # setup.py lists csrc/ when loaded
    return load_setup_script("wv_setup_versions")


def fake_toolkit(root, version):
    (root / "include").mkdir(parents=True)
    (root / "include" / "cuda_runtime_api.h").write_text(f"#define CUDART_VERSION {version}\n")
    (root / "lib64").mkdir()
    (root / "include" / "cudnn.h").write_text("")
    (root / "lib64" / "libcudnn.so.9").write_text("")
    return root


def fake_wheel(site_packages, package, dist_info, lib, header):
    root = site_packages / "nvidia" / package
    (root / "include").mkdir(parents=True)
    (root / "include" / header).write_text("")
    (root / "lib").mkdir()
    (root / "lib" / lib).write_text("")
    (site_packages / dist_info).mkdir()
    return root


def test_the_cuda_major_of_each_library_is_read_where_it_shows(setup_module, tmp_path):
    toolkit = fake_toolkit(tmp_path / "cuda-13.0", 13000)
    sp = tmp_path / "site-packages"
    cudnn12 = fake_wheel(sp, "cudnn", "nvidia_cudnn_cu12-9.1.0.70.dist-info", "libcudnn.so.9", "cudnn.h")
    cublas12 = fake_wheel(sp, "cublas", "nvidia_cublas_cu12-12.8.4.1.dist-info", "libcublas.so.12", "cublas_v2.h")
    assert setup_module.toolkit_cuda_version(str(toolkit)) == (13, 0)
    major = setup_module.toolkit_cuda_version(str(toolkit))[0]
    assert setup_module.library_cuda_major(str(toolkit / "lib64" / "libcudnn.so.9"), str(toolkit), major) == 13
    assert setup_module.library_cuda_major(str(cudnn12 / "lib" / "libcudnn.so.9"), str(toolkit), major) == 12
    assert setup_module.library_cuda_major(str(cublas12 / "lib" / "libcublas.so.12"), str(toolkit), major) == 12
    assert setup_module.library_cuda_major(str(tmp_path / "cudnn" / "lib" / "libcudnn.so.9"), str(toolkit),
                                           major) is None


def test_a_cublas_of_the_toolkits_cuda_major_is_preferred(setup_module, tmp_path):
    toolkit = fake_toolkit(tmp_path / "cuda-13.0", 13000)
    (toolkit / "include" / "cublas_v2.h").write_text("")
    (toolkit / "lib64" / "libcublas.so.13").write_text("")
    cublas12 = fake_wheel(tmp_path / "site-packages", "cublas", "nvidia_cublas_cu12-12.8.4.1.dist-info",
                          "libcublas.so.12", "cublas_v2.h")
    names = ("cublas_v2.h", ["libcublas.so.13", "libcublas.so.12"])
    inc, lib = setup_module.pick_library("cuBLAS", [str(cublas12), str(toolkit)], names, str(toolkit), 13, True)
    assert lib == str(toolkit / "lib64" / "libcublas.so.13") and setup_module.CUDA_NOTE["warnings"] == []
    inc, lib = setup_module.pick_library("cuBLAS", [str(cublas12)], names, str(toolkit), 13, True)  # the only one
    assert lib == str(cublas12 / "lib" / "libcublas.so.12")
    assert setup_module.CUDA_NOTE["warnings"] == [
        f"cuBLAS {lib} is built for CUDA 12 and the toolkit is CUDA 13: the CUDA backend will need a driver for "
        "CUDA 13; a CUDA 12 toolkit (CUDA_HOME) matches it"]


def test_a_cublas_path_named_is_taken_whatever_its_cuda(setup_module, tmp_path, monkeypatch):
    """CUBLAS_PATH is the user's choice: taken, with the warning, not passed over for the toolkit's own."""
    toolkit = fake_toolkit(tmp_path / "cuda-13.0", 13000)
    (toolkit / "include" / "cublas_v2.h").write_text("")
    (toolkit / "lib64" / "libcublas.so.13").write_text("")
    cublas12 = fake_wheel(tmp_path / "mine", "cublas", "nvidia_cublas_cu12-12.8.4.1.dist-info", "libcublas.so.12",
                          "cublas_v2.h")
    monkeypatch.setenv("CUBLAS_PATH", str(cublas12))
    monkeypatch.setattr(setup_module, "find_nvcc", lambda: str(toolkit / "bin" / "nvcc"))
    monkeypatch.setattr(setup_module, "cuda_root", lambda nvcc: str(toolkit))
    monkeypatch.setattr(setup_module, "site_dirs", lambda: [])
    monkeypatch.setattr(setup_module, "machine_gpu_caps", lambda: [])
    (toolkit / "lib64" / "libcudart_static.a").write_text("")
    cfg = setup_module.cuda_config()
    assert cfg["cublas_lib"] == str(cublas12 / "lib" / "libcublas.so.12")
    assert any("cuBLAS" in w and "built for CUDA 12" in w for w in setup_module.CUDA_NOTE["warnings"])


@pytest.mark.skipif(os.name == "nt", reason="the Linux runtime's names (the Windows wheel's is tested below)")
def test_a_cuda_runtime_of_another_major_is_not_linked(setup_module, tmp_path, monkeypatch):
    """nvcc from the cu13 wheels, and the cu12 runtime wheel left behind by PyTorch's upgrade: its
    libcudart.so.12 sorted last and was linked to code compiled with CUDA 13's headers."""
    sp = tmp_path / "site-packages"
    cu13 = fake_wheel(sp, "cu13", "nvidia_cuda_runtime-13.0.96.dist-info", "libcudart.so.13", "cuda_runtime_api.h")
    fake_wheel(sp, "cuda_runtime", "nvidia_cuda_runtime_cu12-12.8.90.dist-info", "libcudart.so.12", "cuda_runtime_api.h")
    monkeypatch.setattr(setup_module, "site_dirs", lambda: [str(sp)])
    assert setup_module.find_cudart(str(cu13), str(cu13 / "lib"), 13) == str(cu13 / "lib" / "libcudart.so.13")
    (cu13 / "lib" / "libcudart.so.13").unlink()
    assert setup_module.find_cudart(str(cu13), str(cu13 / "lib"), 13) is None
    assert setup_module.CUDA_NOTE["warnings"][-1].startswith(
        "the CUDA runtime libraries found are for another CUDA than the toolkit's 13 (")
    assert setup_module.find_cudart(str(cu13), str(cu13 / "lib"), 12).endswith("libcudart.so.12")


def test_the_cudnn_linked_is_the_cudnn_compiled(setup_module, tmp_path):
    """A cudnn.h copied into the toolkit (NVIDIA's old instructions: cuDNN 8's) came before the wheel's,
    whose library was linked: cuDNN's folder goes first where it holds cuDNN's headers alone."""
    toolkit = fake_toolkit(tmp_path / "cuda-13.0", 13000)
    cudnn = fake_wheel(tmp_path / "sp", "cudnn", "nvidia_cudnn_cu13-9.1.dist-info", "libcudnn.so.9", "cudnn.h")
    cublas = fake_wheel(tmp_path / "sp", "cu13", "nvidia_cublas-13.1.dist-info", "libcublas.so.13", "cublas_v2.h")
    (cublas / "include" / "cuda_runtime_api.h").write_text("")  # runtime headers too: after the toolkit's
    cfg = {"toolkit": str(toolkit), "cudnn_inc": str(cudnn / "include"), "cublas_inc": str(cublas / "include")}
    assert setup_module.cuda_include_order(cfg) == [str(cudnn / "include"), str(toolkit / "include"),
                                                    str(cublas / "include")]
    conda = tmp_path / "env" / "include"  # a folder of everything: the toolkit's own headers still first
    conda.mkdir(parents=True)
    (conda / "cuda_runtime_api.h").write_text("")
    assert setup_module.cuda_include_order(dict(cfg, cudnn_inc=str(conda)))[:2] == [str(toolkit / "include"), str(conda)]
    assert setup_module.cuda_include_order(dict(cfg, cudnn_inc=str(toolkit / "include"))) == [
        str(toolkit / "include"), str(cublas / "include")]


def test_the_core_is_rebuilt_for_another_numpy(setup_module, tmp_path, monkeypatch):
    """Its sources unchanged, setuptools kept a module built against an earlier NumPy (a NumPy 1.x
    module does not load under NumPy 2): the stamp of the build's environment is one of its depends,
    written anew only when the environment differs."""
    build = types.SimpleNamespace(build_temp=str(tmp_path / "temp"))
    stamp = setup_module.BuildExt.environment_stamp(build)
    os.utime(stamp, (1, 1))
    assert setup_module.BuildExt.environment_stamp(build) == stamp and os.path.getmtime(stamp) == 1
    monkeypatch.setattr(setup_module.numpy, "__version__", "1.26.4")
    setup_module.BuildExt.environment_stamp(build)
    assert os.path.getmtime(stamp) > 1 and "numpy 1.26.4 " in pathlib.Path(stamp).read_text(encoding="utf-8")


@pytest.mark.skipif(os.name == "nt", reason="a POSIX shell script stands in for nvcc")
def test_an_nvcc_saying_bytes_of_no_encoding_leaves_a_cpu_build(setup_module, tmp_path):
    """nvcc --dryrun's TOP= line in a folder's name that is not UTF-8: a UnicodeDecodeError escaped the
    build's CUDA checks, and pip install failed instead of building CPU-only."""
    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\nprintf '#$ TOP=/opt/caf\\351/cuda\\n'\n")
    nvcc.chmod(0o755)
    assert setup_module.cuda_root(str(nvcc)) == str(tmp_path / "cuda")


def test_a_uv_build_environment_leaves_no_rpath(setup_module, tmp_path, monkeypatch):
    """uv builds in ~/.cache/uv/builds-v0/.tmpXXXX, outside the temporary folder: a path gone after the build."""
    uv = tmp_path / ".cache" / "uv" / "builds-v0" / ".tmpAbC123" / "site-packages" / "scipy_openblas32" / "lib"
    touch(uv / "libscipy_openblas.so")
    monkeypatch.setattr(setup_module.scipy_openblas32, "get_lib_dir", lambda: str(uv))
    monkeypatch.setattr(setup_module.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))  # not where uv builds
    args = setup_module.core_extension().extra_link_args
    assert not any(str(uv) in arg for arg in args)
    monkeypatch.setattr(setup_module.scipy_openblas32, "get_lib_dir", lambda: str(tmp_path / "venv"))
    touch(tmp_path / "venv" / "libscipy_openblas.so")
    assert os.name == "nt" or any(str(tmp_path / "venv") in arg for arg in setup_module.core_extension().extra_link_args)


def test_the_cudnn_pytorch_loads_is_taken_whatever_its_cuda(setup_module, tmp_path):
    """Every cuDNN 9 is libcudnn.so.9: in a process that imported PyTorch, PyTorch's (the wheel's) is the
    one loaded, whichever the build linked; the build takes its headers and says when its CUDA differs."""
    toolkit = fake_toolkit(tmp_path / "cuda-13.0", 13000)
    cudnn12 = fake_wheel(tmp_path / "site-packages", "cudnn", "nvidia_cudnn_cu12-9.1.0.70.dist-info",
                         "libcudnn.so.9", "cudnn.h")
    names = ("cudnn.h", ["libcudnn.so.9"])
    inc, lib = setup_module.pick_library("cuDNN", [str(cudnn12), str(toolkit)], names, str(toolkit), 13, False)
    assert lib == str(cudnn12 / "lib" / "libcudnn.so.9") and inc == str(cudnn12 / "include")
    assert setup_module.CUDA_NOTE["warnings"] == [
        f"cuDNN {lib} is built for CUDA 12 and the toolkit is CUDA 13: the CUDA backend will need a driver for "
        "CUDA 13; a CUDA 12 toolkit (CUDA_HOME) matches it"]


def test_a_toolkit_newer_than_pytorchs_cuda_is_reported(setup_module, tmp_path, monkeypatch):
    sp = tmp_path / "site-packages"
    (sp / "torch").mkdir(parents=True)
    (sp / "torch" / "version.py").write_text("from typing import Optional\ncuda: Optional[str] = '12.8'\n")
    monkeypatch.setattr(setup_module, "site_dirs", lambda: [str(sp)])
    assert setup_module.torch_cuda_version() == "12.8"
    setup_module.check_torch_cuda((12, 9))
    setup_module.check_torch_cuda((11, 8))  # older: it runs on PyTorch's driver
    assert setup_module.CUDA_NOTE["warnings"] == []
    setup_module.check_torch_cuda((13, 0))
    assert setup_module.CUDA_NOTE["warnings"] == [
        "PyTorch here is built for CUDA 12.8 and the toolkit is CUDA 13.0: the CUDA backend needs a driver for "
        "CUDA 13.0, newer than PyTorch needs (backends() says when it is not); a CUDA 12 toolkit (CUDA_HOME) "
        "matches PyTorch"]
    (sp / "torch" / "version.py").write_text("cuda = None\n")  # a CPU build of PyTorch: nothing to match
    setup_module.CUDA_NOTE["warnings"].clear()
    setup_module.check_torch_cuda((13, 0))
    assert setup_module.CUDA_NOTE["warnings"] == []


def test_backends_reports_the_builds_warnings(monkeypatch):
    import types

    import wanvideo_vae as wv
    recorded = types.ModuleType("wanvideo_vae._build_info")
    recorded.CUDA_NOT_BUILT, recorded.CUDA_BUILD_WARNINGS = "", ["PyTorch here is built for CUDA 12.8 and ..."]
    monkeypatch.setitem(sys.modules, "wanvideo_vae._build_info", recorded)
    assert wv.backends()["cuda"]["build_warnings"] == ["PyTorch here is built for CUDA 12.8 and ..."]


def test_a_toolkit_header_in_utf8_is_read_under_any_code_page(setup_module, tmp_path):
    """CUDA 12.4's and 13's cuda_runtime_api.h hold UTF-8 punctuation, which Windows' Korean or Chinese
    code page cannot decode: the version is read all the same (before, the whole install failed)."""
    toolkit = fake_toolkit(tmp_path / "cuda-12.4", 12040)
    header = toolkit / "include" / "cuda_runtime_api.h"
    header.write_bytes("/* the runtime\u2019s API\u00a0*/\n".encode("utf-8") + b"/* \xff\xfe */\n" + header.read_bytes())
    assert setup_module.toolkit_cuda_version(str(toolkit)) == (12, 4)


def test_text_files_are_opened_with_a_named_encoding():
    """Windows opens text in the ANSI code page unless told: every text open() of the build, the
    installer, the package and the tools names its encoding (a build record holding a non-ASCII path
    written in cp936 stopped the package importing)."""
    import ast
    import glob
    files = [os.path.join(REPO, f) for f in ("setup.py", "install.py", "__init__.py")]
    files += glob.glob(os.path.join(REPO, "wanvideo_vae", "*.py")) + glob.glob(os.path.join(REPO, "tools", "*.py"))
    unnamed = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call) or getattr(call.func, "id", getattr(call.func, "attr", None)) != "open":
                continue
            mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
            binary = isinstance(mode, ast.Constant) and "b" in str(mode.value)
            if not binary and not any(k.arg == "encoding" for k in call.keywords):
                unnamed.append(f"{os.path.relpath(path, REPO)}:{call.lineno}")
    assert not unnamed, unnamed


def test_warnings_are_not_recorded_for_a_backend_that_was_not_built(setup_module, tmp_path):
    setup_module.warn("cuDNN ... is built for CUDA 12 and the toolkit is CUDA 13 ...")
    setup_module.CUDA_NOTE["why"] = "cuBLAS not found (...)"
    setup_module.BuildExt.write_build_info(str(tmp_path / "_build_info.py"))
    scope = {}
    exec((tmp_path / "_build_info.py").read_text(), scope)
    assert scope["CUDA_NOT_BUILT"] == "cuBLAS not found (...)" and scope["CUDA_BUILD_WARNINGS"] == []


# ---- the Windows branches of setup.py and of the DLL search, run here with stand-ins -------------
# (a mistake in them would break every Windows install, and CI has no Windows machine)

def touch(path, text=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def windows_tree(tmp_path):
    """A CUDA 13 toolkit and the nvidia-cudnn-cu13 / nvidia-cublas wheels as laid out on Windows."""
    toolkit = tmp_path / "CUDA" / "v13.0"
    touch(toolkit / "bin" / "nvcc.exe")
    touch(toolkit / "bin" / "x64" / "cudart64_13.dll")
    touch(toolkit / "include" / "cuda_runtime_api.h", "#define CUDART_VERSION 13000\n")
    touch(toolkit / "lib" / "x64" / "cudart_static.lib")
    sp = tmp_path / "site-packages"
    touch(sp / "nvidia" / "cudnn" / "include" / "cudnn.h")
    touch(sp / "nvidia" / "cudnn" / "bin" / "cudnn64_9.dll")
    (sp / "nvidia_cudnn_cu13-9.28.0.dist-info").mkdir()
    touch(sp / "nvidia" / "cu13" / "include" / "cublas_v2.h")
    touch(sp / "nvidia" / "cu13" / "bin" / "x86_64" / "cublas64_13.dll")
    touch(sp / "torch" / "lib" / "cudnn64_9.dll")
    return toolkit, sp


@pytest.fixture
def on_windows(setup_module, tmp_path, monkeypatch):
    monkeypatch.setattr(setup_module, "WINDOWS", True)
    for var in ("CUDA_HOME", "CUDNN_PATH", "CUBLAS_PATH", "WANVIDEO_CUDA", "WANVIDEO_CUDA_ARCHS", "INCLUDE", "LIB"):
        monkeypatch.delenv(var, raising=False)
    toolkit, sp = windows_tree(tmp_path / "ComfyUI [portable]")  # a glob's brackets in the path
    monkeypatch.setenv("CUDA_PATH", str(toolkit))
    monkeypatch.setattr(setup_module, "site_dirs", lambda: [str(sp)])
    return setup_module, toolkit, sp


@pytest.mark.parametrize("text,archs", [
    ("", ["75", "80", "86", "89", "90"]), (";", ["75", "80", "86", "89", "90"]), ("90;", ["90"]),
    ("sm_90,compute_86", ["86", "90"]), ("9.0+PTX 8.6", ["86", "90"]), ("100a;90", ["90", "100a"]),
])
def test_cuda_archs_are_read_in_the_forms_users_write_them(setup_module, text, archs):
    assert setup_module.cuda_archs(text) == (archs, None)


@pytest.mark.parametrize("cap,runs", [
    ("75", True), ("87", True), ("89", True), ("90", True), ("120", True),  # 8.7 on 8.6's binary, 12.0 on the PTX
    ("61", False), ("70", False), ("72", False),
])
def test_the_default_archs_run_on_gpus_of_their_majors_and_newer(setup_module, cap, runs):
    assert setup_module.runs_on(setup_module.cuda_archs("")[0], cap) is runs


def fake_nvidia_smi(folder, monkeypatch, output, status=0):
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '{output}'\nexit {status}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.skipif(os.name == "nt", reason="a POSIX shell script stands in for nvidia-smi")
def test_the_machines_gpus_are_read_from_nvidia_smi(setup_module, tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path / "bin", monkeypatch, "6.1\\n12.0\\n6.1\\n[N/A]\\n")
    assert setup_module.machine_gpu_caps() == ["61", "120"]
    fake_nvidia_smi(tmp_path / "old", monkeypatch, "Field compute_cap is not a valid field", status=2)
    assert setup_module.machine_gpu_caps() == []


def test_a_gpu_the_default_archs_miss_is_built_for_where_nvcc_can(setup_module, monkeypatch):
    """A P100 (6.0) beside an H100: 6.0 joins the archs (the PTX stays the newest's); where nvcc cannot
    build for it, or the user chose the archs, a warning says the backend will not run on it."""
    archs = setup_module.cuda_archs("")[0]
    monkeypatch.setattr(setup_module, "machine_gpu_caps", lambda: ["60", "90"])
    monkeypatch.setattr(setup_module, "nvcc_caps", lambda nvcc: {"50", "60", "75", "80", "86", "89", "90"})
    assert setup_module.archs_for_machine(archs, "nvcc", chosen=False) == ["60"] + archs
    assert setup_module.CUDA_NOTE["warnings"] == []
    assert setup_module.archs_for_machine(["86"], "nvcc", chosen=True) == ["86"]
    assert setup_module.CUDA_NOTE["warnings"] == [
        "WANVIDEO_CUDA_ARCHS has no code for this machine's GPU of compute capability 6.0: the CUDA backend will "
        "not run on it (add 60)"]
    monkeypatch.setattr(setup_module, "nvcc_caps", lambda nvcc: {"75", "80", "86", "89", "90", "100", "120"})
    assert setup_module.archs_for_machine(archs, "nvcc", chosen=False) == archs
    assert setup_module.CUDA_NOTE["warnings"][-1].startswith(
        "this CUDA toolkit does not build for this machine's GPU of compute capability 6.0: the CUDA backend will "
        "not run on it (a CUDA 12 toolkit builds for 5.0 and newer")


def test_a_gpu_newer_than_the_default_archs_is_built_for_where_nvcc_can(setup_module, monkeypatch):
    """An RTX 5090 (12.0) runs the default archs' PTX, compiled by its driver at first use: where nvcc
    builds for 12.0 it joins the archs (and the PTX becomes its own); not where nvcc cannot, nor where the
    user chose the archs, and with no warning either way (the PTX runs)."""
    archs = setup_module.cuda_archs("")[0]
    monkeypatch.setattr(setup_module, "machine_gpu_caps", lambda: ["120"])
    monkeypatch.setattr(setup_module, "nvcc_caps", lambda nvcc: {"75", "80", "86", "89", "90", "100", "120"})
    assert setup_module.archs_for_machine(archs, "nvcc", chosen=False) == archs + ["120"]
    assert setup_module.archs_for_machine(["86", "90"], "nvcc", chosen=True) == ["86", "90"]
    monkeypatch.setattr(setup_module, "nvcc_caps", lambda nvcc: {"75", "80", "86", "89", "90"})
    assert setup_module.archs_for_machine(archs, "nvcc", chosen=False) == archs
    assert setup_module.CUDA_NOTE["warnings"] == []


def test_cuda_archs_that_are_no_compute_capability_are_refused_by_name(on_windows, monkeypatch):
    setup_module, _, _ = on_windows
    monkeypatch.setenv("WANVIDEO_CUDA_ARCHS", "86;abc")
    assert setup_module.cuda_config() is None
    assert setup_module.CUDA_NOTE["why"].startswith("WANVIDEO_CUDA_ARCHS has 'abc', not a compute capability")


def test_mistyped_cuda_archs_are_named_before_what_the_machine_lacks(setup_module, monkeypatch):
    monkeypatch.setenv("WANVIDEO_CUDA_ARCHS", "hopper")
    monkeypatch.delenv("WANVIDEO_CUDA", raising=False)
    monkeypatch.setattr(setup_module, "find_nvcc", lambda: None)  # no toolkit, no cuDNN either
    assert setup_module.cuda_config() is None
    assert setup_module.CUDA_NOTE["why"].startswith("WANVIDEO_CUDA_ARCHS has 'hopper', not a compute capability")


def test_the_install_script_knows_the_builds_reason_for_lacking_nvcc(setup_module, monkeypatch):
    """install.py brings nvcc from PyPI where backends() gives setup.py's reason for building without one."""
    for var in ("WANVIDEO_CUDA", "WANVIDEO_CUDA_ARCHS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(setup_module, "find_nvcc", lambda: None)
    assert setup_module.cuda_config() is None
    assert ("not built: " + setup_module.CUDA_NOTE["why"]).startswith(load_install_script().NVCC_NOT_FOUND)


def test_a_cuda_home_without_nvcc_is_said_not_passed_over(on_windows, tmp_path, monkeypatch):
    """CUDA_HOME names the toolkit a user wants (another CUDA version): one without nvcc is a warning,
    not silently another toolkit; so is a CUDNN_PATH that is no folder."""
    setup_module, toolkit, _ = on_windows
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda-12.4"))
    monkeypatch.setenv("CUDNN_PATH", str(tmp_path / "no cudnn"))
    assert setup_module.cuda_config()["toolkit"] == str(toolkit)  # CUDA_PATH's
    said = " | ".join(setup_module.CUDA_NOTE["warnings"])
    assert f"CUDA_HOME={tmp_path / 'cuda-12.4'} has no bin" in said and "CUDNN_PATH=" in said


@pytest.mark.parametrize("windows", [False, True])
def test_the_nvcc_of_the_wheel_is_found_where_no_toolkit_is(setup_module, tmp_path, monkeypatch, windows):
    """No CUDA_HOME, no nvcc on PATH, none in the toolkit's default folders: the nvidia-cuda-nvcc wheel's
    (nvidia/cu13/bin/nvcc), the newest CUDA major of the environments' first; CUDA 12's wheel
    (nvidia/cuda_nvcc/bin: ptxas alone) has none. A toolkit in a default folder, and nvcc on PATH,
    come first."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(var, raising=False)
    real_isfile = os.path.isfile
    monkeypatch.setattr(setup_module.os.path, "isfile",
                        lambda p: real_isfile(p) and str(tmp_path) in str(p))  # no /usr/local/cuda here
    monkeypatch.setattr(setup_module.glob, "glob", lambda pattern, _glob=setup_module.glob.glob: [
        hit for hit in _glob(pattern) if str(tmp_path) in hit])
    monkeypatch.setattr(setup_module, "WINDOWS", windows)
    exe = "nvcc.exe" if windows else "nvcc"  # nvidia\cu13\bin\nvcc.exe in the Windows wheel
    first, second = tmp_path / "venv", tmp_path / "user"
    for sp, folder in ((first, "cu13"), (first, "cuda_nvcc"), (second, "cu14"), (second, "cu13")):
        (sp / "nvidia" / folder / "bin").mkdir(parents=True)
        (sp / "nvidia" / folder / "bin" / ("ptxas" if folder == "cuda_nvcc" else exe)).write_text("")
    monkeypatch.setattr(setup_module, "site_dirs", lambda: [str(first), str(second)])
    monkeypatch.setattr(setup_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(setup_module, "torch_cuda_version", lambda: None)
    assert setup_module.find_nvcc() == str(second / "nvidia" / "cu14" / "bin" / exe)
    monkeypatch.setattr(setup_module, "torch_cuda_version", lambda: "13.0")  # PyTorch's CUDA major first
    assert setup_module.find_nvcc() == str(first / "nvidia" / "cu13" / "bin" / exe)
    shutil.rmtree(first / "nvidia" / "cu13")
    assert setup_module.find_nvcc() == str(second / "nvidia" / "cu13" / "bin" / exe)
    shutil.rmtree(second / "nvidia" / "cu13")
    assert setup_module.find_nvcc() == str(second / "nvidia" / "cu14" / "bin" / exe)
    shutil.rmtree(second / "nvidia" / "cu14")
    assert setup_module.find_nvcc() is None
    if windows:
        return
    monkeypatch.setattr(setup_module.os.path, "isfile", lambda p: p == "/usr/local/cuda/bin/nvcc" or (
        real_isfile(p) and str(tmp_path) in str(p)))  # a toolkit installed keeps building as it did
    assert setup_module.find_nvcc() == "/usr/local/cuda/bin/nvcc"
    monkeypatch.setattr(setup_module.shutil, "which", lambda name: "/opt/cuda/bin/nvcc")
    assert setup_module.find_nvcc() == "/opt/cuda/bin/nvcc"


def test_a_toolkit_of_wheels_names_the_wheel_its_headers_lack(setup_module, tmp_path):
    """nvcc's wheel brings no runtime headers (nvidia-cuda-runtime) and no CCCL (nvidia-cuda-cccl, whose
    <nv/target> CUDA 12 on's cuda_fp16.h includes): said before nvcc would stop on a missing header.
    Only of a toolkit of wheels: conda's nvcc (TOP the environment) keeps its headers elsewhere."""
    assert setup_module.wheel_toolkit_major(str(tmp_path / "site-packages" / "nvidia" / "cu13")) == 13
    assert setup_module.wheel_toolkit_major(str(tmp_path / "envs" / "comfy")) is None  # conda's TOP
    assert setup_module.wheel_toolkit_major(str(tmp_path / "nvidia" / "cudnn")) is None
    assert setup_module.wheel_toolkit_major("/usr/local/cuda-13.0") is None
    inc = tmp_path / "cu13" / "include"
    inc.mkdir(parents=True)
    assert setup_module.wheel_toolkit_header_gap(str(tmp_path / "cu13")) == (
        f"the CUDA runtime's headers are not in {inc} (for nvcc from the wheel: pip install nvidia-cuda-runtime)")
    (inc / "cuda_runtime_api.h").write_text("#define CUDART_VERSION 13000\n")
    assert setup_module.wheel_toolkit_header_gap(str(tmp_path / "cu13")) is None  # no cuda_fp16.h: nothing to ask
    (inc / "cuda_fp16.h").write_text("#include <nv/target>\n")
    assert setup_module.wheel_toolkit_header_gap(str(tmp_path / "cu13")) == (
        f"the CUDA headers in {inc} include <nv/target>, which is not there (for nvcc from the wheel: pip install "
        "nvidia-cuda-cccl)")
    (inc / "cccl" / "nv").mkdir(parents=True)
    (inc / "cccl" / "nv" / "target").write_text("")  # a CUDA 13 toolkit's own CCCL folder, which nvcc searches
    assert setup_module.wheel_toolkit_header_gap(str(tmp_path / "cu13")) is None
    (inc / "cuda_fp16.h").write_text("#include <cuda_fp16.hpp>\n")  # CUDA 11's: no CCCL asked for
    shutil.rmtree(inc / "cccl")
    assert setup_module.wheel_toolkit_header_gap(str(tmp_path / "cu13")) is None


def test_a_required_cuda_build_that_fails_says_so_in_a_line(setup_module, tmp_path, monkeypatch):
    monkeypatch.setenv("WANVIDEO_CUDA", "auto")
    if not setup_module.cuda_config():
        pytest.skip("setup.py finds no CUDA toolchain (nvcc, cuDNN, cuBLAS) to try")
    r = build_in_place(scratch_copy(tmp_path), WANVIDEO_CUDA="1", WANVIDEO_CUDA_ARCHS="11")  # nvcc refuses it
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "WANVIDEO_CUDA=1 but the CUDA backend failed to build (nvcc exited with status" in r.stderr


def test_windows_cuda_config_finds_the_toolkit_and_the_wheels_dlls(on_windows):
    setup_module, toolkit, sp = on_windows
    cfg = setup_module.cuda_config()
    assert cfg["nvcc"] == str(toolkit / "bin" / "nvcc.exe") and cfg["toolkit"] == str(toolkit)
    assert cfg["cudart"] == str(toolkit / "lib" / "x64" / "cudart_static.lib")
    assert cfg["cudnn_lib"] == str(sp / "nvidia" / "cudnn" / "bin" / "cudnn64_9.dll")
    assert cfg["cublas_lib"] == str(sp / "nvidia" / "cu13" / "bin" / "x86_64" / "cublas64_13.dll")
    assert setup_module.CUDA_NOTE == {"why": "", "warnings": [], "dll_dirs": [
        str(sp / "nvidia" / "cudnn" / "bin"), str(sp / "nvidia" / "cu13" / "bin" / "x86_64")]}
    ext = setup_module.cuda_extension(cfg)
    assert ext.libraries == ["cudart_static", "cudnn", "cublas"] and ext.extra_link_args == []
    assert str(toolkit / "lib" / "x64") in ext.library_dirs


def cudnn_installer_tree(root, cuda_versions):
    """NVIDIA's cuDNN 9 installer for Windows: a folder per CUDA version under include, lib and bin."""
    for v in cuda_versions:
        touch(root / "include" / v / "cudnn.h")
        touch(root / "lib" / v / "x64" / "cudnn.lib")
        touch(root / "bin" / v / "cudnn64_9.dll")
    return root


@pytest.mark.parametrize("where", ["ProgramFiles", "CUDNN_PATH"])
def test_windows_cuda_config_finds_cudnn_from_nvidias_installer(on_windows, tmp_path, monkeypatch, where):
    """C:\\Program Files\\NVIDIA\\CUDNN\\v9.x\\include\\12.9\\cudnn.h, lib\\12.9\\x64\\cudnn.lib,
    bin\\12.9\\cudnn64_9.dll: found there or through CUDNN_PATH, in the folder of the toolkit's CUDA (13.0) where there is one, and
    its DLL's folder recorded for the package to search at import."""
    setup_module, toolkit, sp = on_windows
    shutil.rmtree(sp / "nvidia" / "cudnn")
    program_files = tmp_path / "Program Files"
    cudnn_installer_tree(program_files / "NVIDIA" / "CUDNN" / "v9.2", ["12.9"])  # older, passed over
    cudnn = cudnn_installer_tree(program_files / "NVIDIA" / "CUDNN" / "v9.10", ["12.9", "13.0"])
    if where == "CUDNN_PATH":
        monkeypatch.setenv("CUDNN_PATH", str(cudnn))
        monkeypatch.setenv("ProgramFiles", str(tmp_path / "nowhere"))
    else:
        monkeypatch.setenv("ProgramFiles", str(program_files))
    cfg = setup_module.cuda_config()
    assert cfg["cudnn_inc"] == str(cudnn / "include" / "13.0")
    assert cfg["cudnn_lib"] == str(cudnn / "lib" / "13.0" / "x64" / "cudnn.lib")
    assert setup_module.CUDA_NOTE["dll_dirs"][0] == str(cudnn / "bin" / "13.0")
    assert setup_module.CUDA_NOTE["warnings"] == []
    shutil.rmtree(cudnn / "include" / "13.0")  # only CUDA 12's: taken, with the driver it needs said
    cfg = setup_module.cuda_config()
    assert cfg["cudnn_lib"] == str(cudnn / "lib" / "12.9" / "x64" / "cudnn.lib")
    assert setup_module.CUDA_NOTE["dll_dirs"][0] == str(cudnn / "bin" / "12.9")
    assert any("built for CUDA 12 and the toolkit is CUDA 13" in w for w in setup_module.CUDA_NOTE["warnings"])


def test_windows_cudart_from_the_runtime_wheel(on_windows):
    """An nvcc from pip comes without the toolkit's static runtime; nvidia-cuda-runtime-cu12 has it."""
    setup_module, toolkit, sp = on_windows
    (toolkit / "lib" / "x64" / "cudart_static.lib").unlink()
    wheel = touch(sp / "nvidia" / "cuda_runtime" / "lib" / "x64" / "cudart_static.lib")
    cfg = setup_module.cuda_config()
    assert cfg["cudart"] == str(wheel)
    assert str(wheel.parent) in setup_module.cuda_extension(cfg).library_dirs


@pytest.mark.parametrize("windows", [False, True])
def test_the_active_virtual_environment_is_searched_for_the_wheels(setup_module, tmp_path, monkeypatch, windows):
    """uv builds in an environment of its own, whose sysconfig names that one: the wheels are in the
    active one's site-packages (VIRTUAL_ENV)."""
    monkeypatch.setattr(setup_module, "WINDOWS", windows)
    target = tmp_path / "venv [1]" / ("Lib" if windows else "lib/python3.11") / "site-packages"
    target.mkdir(parents=True)
    monkeypatch.setenv("VIRTUAL_ENV", str(tmp_path / "venv [1]"))
    assert str(target) in setup_module.site_dirs()


def test_the_users_site_packages_are_searched_outside_a_virtual_environment(setup_module, tmp_path, monkeypatch):
    """pip install --user (or pip falling back to it where the Python's own folder is read-only) puts the
    nvidia-* wheels, nvcc's among them, in the user's site-packages, which build isolation takes off
    sys.path: searched last, and only where the Python is no virtual environment (which ignores it)."""
    user = tmp_path / "user site"
    user.mkdir()
    monkeypatch.setattr(setup_module.site, "getusersitepackages", lambda: str(user))
    monkeypatch.setattr(setup_module.sys, "base_prefix", setup_module.sys.prefix)
    assert setup_module.site_dirs()[-1] == str(user)
    monkeypatch.setattr(setup_module.sys, "base_prefix", str(tmp_path / "the base of a venv"))
    assert str(user) not in setup_module.site_dirs()


def test_nvcc_refusing_the_host_compiler_is_run_again_with_the_flag_it_offers(setup_module, monkeypatch, capsys):
    """A Visual Studio newer than the toolkit (setuptools takes the newest installed), a gcc newer than it:
    nvcc says which flag overrides its check; the build takes it once, and backends() reports that."""
    refusal = ("host_config.h(164): fatal error C1189: #error:  -- unsupported Microsoft Visual Studio version! "
               "Only the versions between 2017 and 2022 (inclusive) are supported! The nvcc flag "
               "'-allow-unsupported-compiler' can be used to override this version check")
    runs = []

    def nvcc(cmd, **kw):
        runs.append(cmd)
        refused = "-allow-unsupported-compiler" not in cmd
        return subprocess.CompletedProcess(cmd, 2 if refused else 0, "", refusal if refused else "")

    monkeypatch.setattr(setup_module.subprocess, "run", nvcc)
    setup_module.BuildExt.run_nvcc(["nvcc", "-c", "a.cu"], None)
    assert runs == [["nvcc", "-c", "a.cu"], ["nvcc", "-c", "a.cu", "-allow-unsupported-compiler"]]
    assert len(setup_module.CUDA_NOTE["warnings"]) == 1
    assert "unsupported Microsoft Visual Studio version" in setup_module.CUDA_NOTE["warnings"][0]
    assert refusal in capsys.readouterr().err  # nvcc's words, for pip install -v
    runs.clear()
    monkeypatch.setattr(setup_module.subprocess, "run",  # any other failure: no retry
                        lambda cmd, **kw: runs.append(cmd) or subprocess.CompletedProcess(cmd, 1, "", "error: x"))
    with pytest.raises(subprocess.CalledProcessError):
        setup_module.BuildExt.run_nvcc(["nvcc", "-c", "a.cu"], None)
    assert runs == [["nvcc", "-c", "a.cu"]]


@pytest.mark.parametrize("version,threads", [((13, 0), ["--threads", "0"]), ((11, 2), ["--threads", "0"]),
                                             ((11, 1), []), (None, [])])
def test_nvcc_compiles_the_targets_side_by_side_where_it_can(setup_module, tmp_path, monkeypatch, version, threads):
    """Each arch's SASS and the PTX compile in threads of their own (nvcc's --threads, from CUDA 11.2; 0:
    up to the cores); an older or unknown toolkit gets the plain command, which it knows."""
    from setuptools import Distribution
    runs = []
    monkeypatch.setattr(setup_module.BuildExt, "run_nvcc", staticmethod(lambda cmd, env: runs.append(cmd)))
    build = setup_module.BuildExt(Distribution())
    build.build_temp = str(tmp_path)
    cfg = {"nvcc": "nvcc", "toolkit": str(tmp_path), "cudnn_inc": str(tmp_path), "cublas_inc": str(tmp_path),
           "archs": ["80", "90"], "cuda_version": version}
    build.nvcc_compile(cfg, "cuda/wv_backend_cuda.cu")
    (cmd,) = runs
    targets = ["arch=compute_80,code=sm_80", "arch=compute_90,code=sm_90", "arch=compute_90,code=compute_90"]
    assert cmd[cmd.index("-gencode"):] == [word for t in targets for word in ("-gencode", t)] + threads


class StandInMSVC:
    """What BuildExt uses of setuptools' MSVC compiler object. As setuptools' (77 to 84 at least), its
    initialize() puts Visual Studio's and the SDK's folders on the class; the instance's are the build's."""

    include_dirs, library_dirs = [], []

    def __init__(self, folder):
        self.initialized = False
        self.folder = folder
        self.cc = str(folder / "VC" / "bin" / "cl.exe")
        self.lib = str(folder / "VC" / "bin" / "lib.exe")
        self._paths = str(folder / "VC" / "bin")
        self.include_dirs = [str(folder / "Python" / "include")]
        self.library_dirs = [str(folder / "Python" / "libs")]
        self.spawned = []

    def initialize(self):
        self.initialized = True
        type(self).include_dirs = [str(self.folder / "VC" / "include"), str(self.folder / "SDK" / "ucrt")]
        type(self).library_dirs = [str(self.folder / "VC" / "lib"), str(self.folder / "SDK" / "um")]

    def spawn(self, cmd):
        self.spawned.append(cmd)


def test_windows_cuda_build_makes_import_libraries_and_gives_nvcc_the_msvc_setup(on_windows, tmp_path, monkeypatch):
    setup_module, toolkit, sp = on_windows
    from setuptools import Distribution
    ext = setup_module.cuda_extension(setup_module.cuda_config())
    nvcc_runs, linked = [], []
    def nvcc(cmd, env, **kw):
        nvcc_runs.append((cmd, env))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(setup_module.subprocess, "run", nvcc)
    monkeypatch.setattr(setup_module.build_ext, "build_extension", lambda self, e: linked.append(e))
    build = setup_module.BuildExt(Distribution())
    build.build_temp, build.compiler = str(tmp_path / "temp"), StandInMSVC(tmp_path)
    build.build_extension(ext)
    assert setup_module.CUDA_NOTE["why"] == "" and linked == [ext]
    msvc = build.compiler
    assert [cmd[:3] for cmd in msvc.spawned] == [[msvc.lib, "/nologo", "/machine:x64"]] * 2
    for cmd, name, dll in zip(msvc.spawned, ("cudnn", "cublas"), ("cudnn64_9.dll", "cublas64_13.dll")):
        definition = os.path.join(build.build_temp, name + ".def")
        assert cmd[3:] == ["/def:" + definition, "/out:" + os.path.join(build.build_temp, name + ".lib")]
        lines = pathlib.Path(definition).read_text(encoding="utf-8").split()
        assert lines[:3] == ["LIBRARY", dll, "EXPORTS"] and lines[3:] == setup_module.CUDA_IMPORTS[name]
    assert ext.library_dirs.count(build.build_temp) == 1 and ext.library_dirs[0] == build.build_temp
    assert ext.extra_objects == [os.path.join(build.build_temp, os.path.basename(src) + ".obj")
                                 for src in setup_module.CUDA_SOURCES]
    assert len(nvcc_runs) == len(setup_module.CUDA_SOURCES)
    for cmd, env in nvcc_runs:
        assert cmd[0] == str(toolkit / "bin" / "nvcc.exe")
        assert cmd[cmd.index("-ccbin") + 1] == os.path.dirname(msvc.cc)
        assert cmd[cmd.index("-Xcompiler") + 1] == "/MD,/O2,/EHsc"
        assert cmd[cmd.index("--threads") + 1] == "0"  # the targets side by side (CUDA 13.0 here)
        assert env["PATH"] == msvc._paths
        assert env["INCLUDE"].split(os.pathsep) == StandInMSVC.include_dirs + msvc.include_dirs  # cl finds stdio.h
        assert env["LIB"].split(os.pathsep) == StandInMSVC.library_dirs + msvc.library_dirs


def test_windows_dll_folders_are_added_at_import(tmp_path, monkeypatch):
    from wanvideo_vae import devices
    toolkit, sp = windows_tree(tmp_path / "ComfyUI [portable]")  # a glob's brackets in the path
    added = []
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "add_dll_directory", added.append, raising=False)
    monkeypatch.setattr(devices.sysconfig, "get_paths", lambda: {"purelib": str(sp), "platlib": str(sp)})
    monkeypatch.setenv("CUDA_PATH", str(toolkit))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setattr(devices, "_dll_dirs_added", False)
    monkeypatch.setenv("PATH", "before")
    devices.add_windows_dll_dirs()
    devices.add_windows_dll_dirs()  # once per process
    assert sorted(added) == sorted([str(toolkit / "bin"), str(toolkit / "bin" / "x64"), str(sp / "nvidia" / "cudnn" / "bin"),
                                    str(sp / "nvidia" / "cu13" / "bin"), str(sp / "nvidia" / "cu13" / "bin" / "x86_64")])
    assert os.environ["PATH"] == os.pathsep.join(added + ["before"])  # cuDNN finds its sub-libraries by name
    shutil.rmtree(sp / "nvidia" / "cudnn")  # no cuDNN wheel: PyTorch's own DLLs in torch/lib
    added.clear()
    monkeypatch.setattr(devices, "_dll_dirs_added", False)
    devices.add_windows_dll_dirs()
    assert str(sp / "torch" / "lib") in added and str(sp / "nvidia" / "cudnn" / "bin") not in added
    # the folders of the DLLs the build linked against (NVIDIA's cuDNN installer, say) come first
    from wanvideo_vae import _build_info
    installer = cudnn_installer_tree(tmp_path / "NVIDIA" / "CUDNN" / "v9.10", ["13.0"]) / "bin" / "13.0"
    monkeypatch.setattr(_build_info, "CUDA_DLL_DIRS", [str(installer), str(tmp_path / "gone")], raising=False)
    added.clear()
    monkeypatch.setattr(devices, "_dll_dirs_added", False)
    devices.add_windows_dll_dirs()
    assert added[0] == str(installer) and str(tmp_path / "gone") not in added


@pytest.fixture
def import_order(monkeypatch):
    """(order, forget): `order` lists the imports of torch and wanvideo_vae._cuda from now on, each a
    stand-in module, and forget() drops both (or those named) from sys.modules (put back after the test)."""
    import importlib.abc
    import importlib.machinery
    import types
    import wanvideo_vae
    order = []

    class Recorder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
            if name in ("torch", "wanvideo_vae._cuda"):
                return importlib.machinery.ModuleSpec(name, self)
            return None

        def create_module(self, spec):
            order.append(spec.name)
            return types.ModuleType(spec.name)

        def exec_module(self, module):
            pass

    def forget(names=("torch", "wanvideo_vae._cuda")):  # setitem/setattr put back what was there
        for name in names:
            monkeypatch.setitem(sys.modules, name, sys.modules.get(name))
            del sys.modules[name]
        monkeypatch.setattr(wanvideo_vae, "_cuda", getattr(wanvideo_vae, "_cuda", None), raising=False)
        delattr(wanvideo_vae, "_cuda")

    monkeypatch.setattr(sys, "meta_path", [Recorder()] + sys.meta_path)
    return order, forget


def test_windows_loads_pytorch_before_the_cuda_backend(monkeypatch, import_order):
    """On Windows a DLL of a name already loaded is not loaded again: PyTorch first, so that its cuDNN is
    the one in the process, not ours first with PyTorch's sub-libraries beside it."""
    from wanvideo_vae import devices
    order, forget = import_order
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(devices, "_dll_dirs_added", True)
    forget()
    devices.cuda_module()
    assert order == ["torch", "wanvideo_vae._cuda"]
    monkeypatch.setattr(sys, "platform", "linux")
    order.clear()
    forget()
    devices.cuda_module()
    assert order == ["wanvideo_vae._cuda"]  # elsewhere the libraries' names carry no such clash


def test_backends_adds_the_dll_folders_before_it_loads_the_cuda_backend(monkeypatch, import_order):
    """backends() is the first call of `info`, the CLI's --device auto and the ComfyUI nodes: the C module's
    query imports _cuda itself, which on Windows finds cuDNN and cuBLAS only once their folders are added."""
    import wanvideo_vae as wv
    from wanvideo_vae import devices
    order, forget = import_order
    monkeypatch.setattr(devices, "add_windows_dll_dirs", lambda: order.append("DLL folders"))
    forget(["wanvideo_vae._cuda"])
    wv.backends()
    assert order[:2] == ["DLL folders", "wanvideo_vae._cuda"]


def test_a_cudnn_8_in_the_toolkit_is_passed_over_for_a_cudnn_9(on_windows, tmp_path, monkeypatch):
    """NVIDIA's cuDNN 8 instructions copied it into the toolkit (include\\cudnn.h, lib\\x64\\cudnn.lib); the
    toolkit is searched before the cuDNN 9 installer's folders, and its cuDNN 8 was taken: the build then
    failed at the backend's #error, with the cuDNN 9 installed never tried. Without a cuDNN 9 the reason
    names the old one."""
    setup_module, toolkit, sp = on_windows
    shutil.rmtree(sp / "nvidia" / "cudnn")
    touch(toolkit / "include" / "cudnn.h", '#include "cudnn_version.h"\n')
    touch(toolkit / "include" / "cudnn_version.h", "#define CUDNN_MAJOR 8\n#define CUDNN_MINOR 9\n")
    touch(toolkit / "lib" / "x64" / "cudnn.lib")
    program_files = tmp_path / "Program Files"
    cudnn = cudnn_installer_tree(program_files / "NVIDIA" / "CUDNN" / "v9.10", ["13.0"])
    touch(cudnn / "include" / "13.0" / "cudnn_version.h", "#define CUDNN_MAJOR 9\n")
    monkeypatch.setenv("ProgramFiles", str(program_files))
    cfg = setup_module.cuda_config()
    assert cfg["cudnn_lib"] == str(cudnn / "lib" / "13.0" / "x64" / "cudnn.lib")
    monkeypatch.setenv("ProgramFiles", str(tmp_path / "nowhere"))
    assert setup_module.cuda_config() is None
    assert setup_module.CUDA_NOTE["why"] == (
        f"cuDNN 9 or newer not found: the one in {toolkit / 'include'} is cuDNN 8 (pip install nvidia-cudnn-cu13, "
        "or set CUDNN_PATH)")


@pytest.mark.skipif(os.name == "nt", reason="conda-forge's Linux layout")
def test_a_conda_environments_cudnn_is_found_beside_its_toolkit(setup_module, tmp_path, monkeypatch):
    """conda-forge's nvcc names <env>/targets/x86_64-linux as its toolkit (the CUDA headers and libraries are
    there), and its cudnn package puts cudnn*.h in <env>/include and libcudnn*.so* in <env>/lib, where no
    wheel is: the build went CPU-only ("cuDNN not found")."""
    env = tmp_path / "env"
    toolkit = env / "targets" / "x86_64-linux"
    touch(toolkit / "include" / "cuda_runtime_api.h", "#define CUDART_VERSION 12080\n")
    touch(toolkit / "include" / "cublas_v2.h")
    touch(toolkit / "lib" / "libcublas.so.12")
    touch(toolkit / "lib" / "libcudart_static.a")
    touch(env / "include" / "cudnn.h")
    touch(env / "include" / "cudnn_version.h", "#define CUDNN_MAJOR 9\n")
    touch(env / "lib" / "libcudnn.so.9")
    for var in ("CUDNN_PATH", "CUBLAS_PATH", "CONDA_PREFIX", "WANVIDEO_CUDA", "WANVIDEO_CUDA_ARCHS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(setup_module, "find_nvcc", lambda: str(env / "bin" / "nvcc"))
    monkeypatch.setattr(setup_module, "cuda_root", lambda nvcc: str(toolkit))
    monkeypatch.setattr(setup_module, "site_dirs", lambda: [])
    monkeypatch.setattr(setup_module, "machine_gpu_caps", lambda: [])
    monkeypatch.setattr(setup_module, "torch_cuda_version", lambda: None)
    cfg = setup_module.cuda_config()
    assert cfg["cudnn_inc"] == str(env / "include") and cfg["cudnn_lib"] == str(env / "lib" / "libcudnn.so.9")
    assert cfg["cublas_lib"] == str(toolkit / "lib" / "libcublas.so.12")
    other = tmp_path / "elsewhere"  # an nvcc elsewhere, the environment active: its cuDNN still
    touch(other / "include" / "cuda_runtime_api.h", "#define CUDART_VERSION 12080\n")
    monkeypatch.setattr(setup_module, "cuda_root", lambda nvcc: str(other))
    monkeypatch.setenv("CONDA_PREFIX", str(env))
    assert setup_module.conda_prefixes(str(other)) == [str(env)]
    assert setup_module.conda_prefixes(str(toolkit)) == [str(env)]


def test_a_missing_cudnn_is_named_with_the_wheel_for_the_toolkits_cuda(on_windows):
    setup_module, toolkit, sp = on_windows
    shutil.rmtree(sp / "nvidia" / "cudnn")
    assert setup_module.cuda_config() is None
    assert setup_module.CUDA_NOTE["why"] == "cuDNN not found (pip install nvidia-cudnn-cu13, or set CUDNN_PATH)"


@pytest.mark.parametrize("loader_says,hint", [
    ("libcudnn.so.9: cannot open shared object file: No such file or directory", "pip install nvidia-cudnn-cu13"),
    ("libcublas.so.13: cannot open shared object file: No such file or directory", "pip install nvidia-cublas"),
    ("libcublas.so.12: cannot open shared object file: No such file or directory", "pip install nvidia-cublas-cu12"),
    ("DLL load failed while importing _cuda: The specified module could not be found.",
     "pip install nvidia-cudnn-cu13 nvidia-cublas"),
    ("wanvideo_vae/_cuda.so: undefined symbol: cudnnFoo", None),
])
def test_a_cuda_backend_that_does_not_load_says_what_to_install(loader_says, hint):
    """backends()'s reason for a CUDA module that did not load: the loader's words and, for a library
    it did not find, the wheel that has it; not a pointer back to backends()."""
    from wanvideo_vae.api import _load_failure
    said = _load_failure(f"backend 'cuda' is not available: {loader_says} (see wanvideo_vae.backends())")
    assert loader_says in said and "see wanvideo_vae.backends()" not in said
    assert (hint in said) if hint else said.endswith(loader_says)


def test_required_cuda_fails_builds_not_source_distributions(setup_module, monkeypatch):
    """WANVIDEO_CUDA=1 makes a build without what the CUDA backend needs fail; making an sdist (or the
    metadata pip asks for first) compiles nothing and needs none of it."""
    for argv in (["setup.py", "sdist"], ["setup.py", "egg_info"], ["setup.py", "dist_info"]):
        monkeypatch.setattr(sys, "argv", argv)
        assert setup_module.missing("1", "cuDNN not found") is None
    for argv in (["setup.py", "bdist_wheel"], ["setup.py", "build_ext", "--inplace"], ["setup.py", "editable_wheel"]):
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit, match="WANVIDEO_CUDA=1 but cuDNN not found"):
            setup_module.missing("1", "cuDNN not found")


# ---- older CUDA: the toolkits of PyTorch's cu12x and cu118 users (CI has CUDA 13) ------------------

OLDER_CUDA_LOADS = """
import sys
import wanvideo_vae as wv
cuda = wv.backends()["cuda"]
assert cuda["loaded"] and cuda["compiled"], cuda
assert cuda["versions"]["cuda_runtime"] // 1000 == int(sys.argv[1]), cuda["versions"]
assert cuda["usable"] or f"CUDA {sys.argv[1]}." in cuda["reason"], cuda["reason"]
print("loads:", cuda["versions"], cuda["reason"] or "usable")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="Debian's packages")
@pytest.mark.parametrize("version,env", [("12.4", {}), ("11.8", {"NVCC_APPEND_FLAGS": "-allow-unsupported-compiler"})],
                         ids=["cuda12.4", "cuda11.8"])  # 11.8 predates gcc 12
def test_the_cuda_backend_builds_with_an_older_toolkit_and_passes_its_op_tests(tmp_path, version, env):
    """tools/debian_cuda_toolkit.sh assembles Debian's CUDA 12.4 or 11.8 toolkit; with it setup.py
    builds both modules (the CUDA one loads, reports that CUDA and names it where no driver is), and
    every CUDA op, built with those headers, kernel launch and all, matches the CPU op on the
    stand-in runtime. Runs wherever the CUDA build is required (CI with nvcc), where calls newer than
    a user's toolkit would otherwise go unseen."""
    if os.environ.get("WANVIDEO_REQUIRE_CUDA_BUILD") != "1":
        pytest.skip("the CUDA toolchain is not required here (WANVIDEO_REQUIRE_CUDA_BUILD)")
    if not (shutil.which("apt-get") and shutil.which("dpkg")):
        pytest.skip("needs apt-get and dpkg (Debian's packages of the CUDA toolkit)")
    toolkit = tmp_path / f"cuda-{version}"
    r = subprocess.run(["bash", os.path.join(REPO, "tools", "debian_cuda_toolkit.sh"), version, str(toolkit)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    env = dict(env, CUDA_HOME=str(toolkit), PATH=f"{toolkit}/bin{os.pathsep}{os.environ['PATH']}",
               WANVIDEO_CUDA_ARCHS="80;90")
    src = scratch_copy(tmp_path)
    # setup.py itself retries with -allow-unsupported-compiler where nvcc refuses gcc 12 (11.8)
    r = build_in_place(src, WANVIDEO_CUDA="1", **{k: v for k, v in env.items() if k != "NVCC_APPEND_FLAGS"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert f"nvcc {toolkit}/bin/nvcc" in r.stdout + r.stderr, r.stdout[-2000:] + r.stderr[-2000:]
    retried = [w for w in recorded(src, "CUDA_BUILD_WARNINGS") if "-allow-unsupported-compiler" in w]
    assert bool(retried) == ("NVCC_APPEND_FLAGS" in env), recorded(src, "CUDA_BUILD_WARNINGS")
    r = subprocess.run([sys.executable, "-c", OLDER_CUDA_LOADS, version.split(".")[0]], cwd=tmp_path,
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(src)), timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    r = subprocess.run(["bash", "tests/c/backend_ops_on_cpu.sh", str(tmp_path / "ops")], cwd=REPO, capture_output=True,
                       text=True, env=dict(os.environ, **env), timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    m = re.search(r"^(\d+) cases, 0 failed$", r.stdout, re.M)
    assert m and int(m.group(1)) > 400, r.stdout[-3000:]


# ---- no toolkit: nvcc from the nvidia-cuda-nvcc wheel ----------------------------------------------

# What `pip install nvidia-cuda-nvcc nvidia-cuda-cccl` added to PyTorch 2.11's cu130 environment (its
# nvidia-cuda-runtime pin) on 2026-11-30: nvcc, nvvm and crt of CUDA 13.5, pinned here so the test stays
WHEEL_TOOLKIT = ("nvidia-cuda-nvcc==13.5.37", "nvidia-nvvm==13.5.37", "nvidia-cuda-crt==13.5.37",  # reproducible
                 "nvidia-cuda-cccl==13.3.5.0.6", "nvidia-cuda-runtime==13.0.96")


@pytest.mark.skipif(sys.platform != "linux", reason="the wheels' Linux layout")
def test_the_cuda_backend_builds_with_nvcc_from_the_wheels(tmp_path):
    """A PyTorch environment without a CUDA toolkit: with the nvcc and CCCL wheels installed into it
    (from PyPI), the build runs with that nvcc and those headers (newer than CI's toolkit) and the
    runtime's static library, and the module loads, reporting the runtime's CUDA. (CI's own toolkit
    would be found first: CUDA_HOME names the wheels' here; finding them without it is the test
    above's.) Runs wherever the CUDA build is required (CI with nvcc)."""
    if os.environ.get("WANVIDEO_REQUIRE_CUDA_BUILD") != "1":
        pytest.skip("the CUDA toolchain is not required here (WANVIDEO_REQUIRE_CUDA_BUILD)")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    # the venv's own setuptools (Python 3.11's venv brings 65) would shadow the one pyproject.toml asks for
    r = subprocess.run([str(python), "-m", "pip", "install", "-q", "setuptools>=77", *WHEEL_TOOLKIT],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    toolkit = site / "nvidia" / "cu13"
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_PATH", "PYTHONPATH")}
    env.update(CUDA_HOME=str(toolkit), WANVIDEO_CUDA="1", WANVIDEO_CUDA_ARCHS="90")
    src = scratch_copy(tmp_path)
    r = subprocess.run([str(python), "setup.py", "build_ext", "--inplace"], cwd=src, capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert f"CUDA backend: nvcc {toolkit / 'bin' / 'nvcc'}, " in r.stdout + r.stderr, r.stdout[-2000:]
    r = subprocess.run([str(python), "-c", OLDER_CUDA_LOADS, "13"], cwd=tmp_path, capture_output=True, text=True,
                       env=dict(env, PYTHONPATH=str(src)), timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
