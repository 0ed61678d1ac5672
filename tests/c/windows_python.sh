#!/usr/bin/env bash
# Builds the CPython module (csrc/, the CPU backend) for Windows with MinGW-w64 against a Windows
# CPython and NumPy, and runs the Python tests with that Python under Wine: the module, the Python
# layer and the ComfyUI nodes on Windows (LLP64, its C runtime, its paths, working set and memory
# status, subprocesses, the Windows BLAS DLL), not only the core's C test (cross_windows.sh). Tests
# that need PyTorch run where its Windows wheel is among WANVIDEO_WIN_SITE's, and skip otherwise.
#   bash tests/c/windows_python.sh [out dir] [pytest arguments...]
# Needs x86_64-w64-mingw32-gcc and Wine (Debian: gcc-mingw-w64-x86-64, wine64), and:
#   WANVIDEO_WIN_PYTHON  a Windows CPython with its headers (python.exe, python3XX.dll, include\);
#                        a .pth file naming WANVIDEO_WIN_SITE is written into its Lib\site-packages
#   WANVIDEO_WIN_SITE    the win_amd64 wheels the tests import, unpacked: numpy, scipy_openblas32,
#                        pytest, hypothesis, imageio-ffmpeg, torch and theirs (.ci/run fetches both;
#                        NumPy 1.26: Wine 8's C runtime lacks a function NumPy 2 calls)
# Without them it says what is missing and stops.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$(mkdir -p "${1:-${TMPDIR:-/tmp}/wanvideo_vae_winpy}" && cd "${1:-${TMPDIR:-/tmp}/wanvideo_vae_winpy}" && pwd)"
shift $(( $# > 0 ? 1 : 0 ))
py="${WANVIDEO_WIN_PYTHON:-}"
site="${WANVIDEO_WIN_SITE:-}"
. "$here/wine.sh"
dll=$(ls "$py"/python3[0-9]*.dll 2>/dev/null | head -1 || true)
if [ -z "$wine" ] || ! command -v x86_64-w64-mingw32-gcc >/dev/null || [ -z "$dll" ] || [ ! -d "$site/numpy" ]; then
    echo "Windows Python run skipped: needs Wine (found: ${wine:-none}), MinGW-w64, WANVIDEO_WIN_PYTHON" \
         "(a Windows CPython) and WANVIDEO_WIN_SITE (its wheels)"
    exit 0
fi
version=$(basename "$dll" .dll | sed 's/^python//')  # 311
numpy_inc="$site/numpy/_core/include"  # NumPy 2; 1.x: numpy/core/include
[ -d "$numpy_inc" ] || numpy_inc="$site/numpy/core/include"
blas="$site/scipy_openblas32"
winpath() { echo "Z:$1"; }  # Wine's drive Z: is the Unix root

rm -rf "$out/pkg" && mkdir -p "$out/pkg/wanvideo_vae"
cp "$root"/wanvideo_vae/*.py "$out/pkg/wanvideo_vae/"
printf '%s\n' "CUDA_NOT_BUILT = 'a MinGW-w64 build of the CPU module only (tests/c/windows_python.sh)'" \
    "CUDA_BUILD_WARNINGS = []" "CUDA_DLL_DIRS = []" > "$out/pkg/wanvideo_vae/_build_info.py"
# MS_WIN64 (Py_ssize_t is 64-bit by it): Python's Windows pyconfig.h defines it for MSVC alone before 3.13's,
# which defines it for MinGW-w64 too (given twice, -Werror stops at the redefinition)
win64=-DMS_WIN64
grep -q "__MINGW32__" "$py/include/pyconfig.h" && win64=
x86_64-w64-mingw32-gcc -shared -std=c11 -O2 -Wall -Wextra -Werror -Wno-unused-parameter $win64 \
    -DWV_BLAS_SCIPY_PREFIX -I"$root/csrc" -I"$py/include" -I"$numpy_inc" -I"$blas/include" "$root"/csrc/*.c \
    "$dll" "$blas/lib/libscipy_openblas.dll" -o "$out/pkg/wanvideo_vae/_C.cp$version-win_amd64.pyd"
echo "MinGW-w64: built _C.cp$version-win_amd64.pyd"
# the wheels on the Windows Python's own path, so the tests' subprocesses find them too
winpath "$site" > "$py/Lib/site-packages/wanvideo_vae_test_site.pth"

# KMP_AFFINITY=disabled: PyTorch's OpenMP asks for NUMA masks, a call Wine does not implement.
# ONEDNN_MAX_CPU_ISA: below AMX. On a CPU with AMX, PyTorch's oneDNN runs bf16 on it, which Linux allows
# a process only once it has asked (arch_prctl), and Wine does not ask: an illegal instruction otherwise.
cd "$root/tests"
export PYTHONPATH="$(winpath "$out/pkg")" KMP_AFFINITY=disabled ONEDNN_MAX_CPU_ISA=AVX512_CORE_FP16
export WANVIDEO_SHARED="$(winpath "$(cd "${WANVIDEO_SHARED:-$root/../shared}" && pwd -P)")"
# faulthandler_timeout: a test past 300 s (the slowest takes 30 s here) has every Python thread's stack
# printed, so a hang shows where it is before the run's limit stops it.
in_wine "$out/wineprefix" Windows 1800 "$py/python.exe" -m pytest -q -p no:cacheprovider -o faulthandler_timeout=300 \
    test_engine.py test_tiling.py test_errors.py test_fuzz.py test_cli.py test_workflow.py test_comfy.py "$@"
