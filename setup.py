"""Build of wanvideo_vae._C: the C core and CPU backend, linked against OpenBLAS from the
scipy-openblas32 wheel (the same BLAS SciPy ships). CUDA sources are added by the CUDA backend."""
import os
import sys

import numpy
import scipy_openblas32
from setuptools import Extension, setup

CSRC = sorted(os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".c"))


def compile_args():
    if sys.platform == "win32":
        return ["/O2", "/std:c11"]
    return ["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"]


def link_args():
    if sys.platform == "win32":
        return []
    # At run time the package imports scipy_openblas32 first, which loads the library; the rpath
    # (site-packages/scipy_openblas32/lib beside site-packages/wanvideo_vae) is a second route.
    origin = "@loader_path" if sys.platform == "darwin" else "$ORIGIN"
    return [f"-Wl,-rpath,{origin}/../scipy_openblas32/lib", f"-Wl,-rpath,{scipy_openblas32.get_lib_dir()}"]


ext = Extension(
    "wanvideo_vae._C",
    sources=CSRC,
    include_dirs=["csrc", numpy.get_include(), scipy_openblas32.get_include_dir()],
    define_macros=[("WV_BLAS_SCIPY_PREFIX", "1")],
    library_dirs=[scipy_openblas32.get_lib_dir()],
    libraries=[scipy_openblas32.get_library()],
    extra_compile_args=compile_args(),
    extra_link_args=link_args(),
)

setup(ext_modules=[ext])
