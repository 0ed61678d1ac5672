#!/usr/bin/env bash
# Runs the GPU tests (tests/test_cuda.py) without a GPU: builds wanvideo_vae._cuda against the stand-in
# CUDA runtime, cuDNN and cuBLAS of tests/c/cuda_stub/ computing on the CPU (WANVIDEO_STUB_COMPUTE=2),
# beside a copy of the package this Python imports (its _C included), and runs the tests that need no
# torch CUDA tensors (WANVIDEO_TEST_CUDA_STUB=1). What it checks: the tests themselves (a GPU session is
# too rare to spend on a test's own bug) and the Python layer over the CUDA tables; the GPU's
# arithmetic, timing and memory are the GPU run's (tools/gpu_check.sh).
#   bash tests/c/cuda_python.sh [build dir] [pytest arguments...]      ($PYTHON: the Python, default python3)
set -euo pipefail
PY=${PYTHON:-python3}
cd "$(dirname "$0")/../.."
REPO=$PWD
OUTDIR=$(mkdir -p "${1:-${BUILD_DIR:-build/cuda_python}}" && cd "${1:-${BUILD_DIR:-build/cuda_python}}" && pwd)
shift $(( $# > 0 ? 1 : 0 ))
LINK=$(bash tests/c/cuda_stub/build.sh "$OUTDIR" -g -O1 -fPIC)
PKG=$(cd "$OUTDIR" && "$PY" -c "import os, wanvideo_vae; print(os.path.dirname(wanvideo_vae.__file__))")
SUFFIX=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
rm -rf "$OUTDIR/site" && mkdir -p "$OUTDIR/site"
cp -r "$PKG" "$OUTDIR/site/wanvideo_vae"
rm -f "$OUTDIR/site/wanvideo_vae/_cuda"*
gcc -std=c11 -g -O1 -fPIC -Wall -Wextra -Werror -Icsrc -Icuda -I"$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")" \
    -c cuda/module_cuda.c -o "$OUTDIR/module_cuda.o"
g++ -shared -fPIC "$OUTDIR/module_cuda.o" $LINK -o "$OUTDIR/site/wanvideo_vae/_cuda$SUFFIX"
cd "$OUTDIR" # not the repository: its wanvideo_vae/ sources must not shadow the copy
WANVIDEO_STUB_COMPUTE=2 WANVIDEO_TEST_CUDA_STUB=1 PYTHONPATH="$OUTDIR/site" \
    "$PY" -m pytest -q -p no:cacheprovider "$REPO/tests/test_cuda.py" "$@"
