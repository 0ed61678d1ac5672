"""The build (setup.py) in a scratch copy of the sources: a CUDA module of an earlier build never
outlives a build without one, and the reason the CUDA backend was left out is recorded for backends()."""
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from helpers import REPO

SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")


def scratch_copy(tmp_path):
    src = tmp_path / "src"
    for name in ("csrc", "cuda", "wanvideo_vae"):
        shutil.copytree(os.path.join(REPO, name), src / name,
                        ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "_build_info.py"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    return src


def build_in_place(src, **env):
    return subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=src, capture_output=True,
                          text=True, env=dict(os.environ, **env), timeout=600)


def recorded_reason(src):
    scope = {}
    exec((src / "wanvideo_vae" / "_build_info.py").read_text(), scope)
    return scope["CUDA_NOT_BUILT"]


def test_a_build_without_cuda_removes_an_earlier_cuda_module(tmp_path):
    src = scratch_copy(tmp_path)
    stale = src / "wanvideo_vae" / ("_cuda" + SUFFIX)
    stale.write_bytes(b"an earlier build's CUDA module")
    r = build_in_place(src, WANVIDEO_CUDA="0")
    assert r.returncode == 0, r.stderr
    assert (src / "wanvideo_vae" / ("_C" + SUFFIX)).exists() and not stale.exists()
    assert recorded_reason(src) == "skipped (WANVIDEO_CUDA=0)"
    assert not list((src / "build").rglob("_cuda" + SUFFIX))


@pytest.mark.skipif(not shutil.which("nvcc"), reason="needs nvcc")
def test_a_failed_cuda_build_goes_on_cpu_only_and_says_why(tmp_path):
    src = scratch_copy(tmp_path)
    r = build_in_place(src, WANVIDEO_CUDA="auto", WANVIDEO_CUDA_ARCHS="11")  # an architecture nvcc refuses
    assert r.returncode == 0, r.stderr
    assert (src / "wanvideo_vae" / ("_C" + SUFFIX)).exists()
    assert not (src / "wanvideo_vae" / ("_cuda" + SUFFIX)).exists()
    assert recorded_reason(src).startswith("it failed to build (nvcc exited with status")


def test_an_unknown_cuda_mode_is_refused(tmp_path):
    r = build_in_place(scratch_copy(tmp_path), WANVIDEO_CUDA="maybe")
    assert r.returncode != 0 and "WANVIDEO_CUDA='maybe'" in r.stderr
