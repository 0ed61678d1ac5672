#!/usr/bin/env bash
# Compiles the C core (everything but the CPython module) and its C test for Windows with MinGW-w64,
# as a check that nothing POSIX-only crept in; then, where Wine and a Windows build of the BLAS are
# at hand, links the test and runs it under Wine: the core on Windows' ABI (LLP64, the Windows C
# runtime), not only compiled for it.
#   bash tests/c/cross_windows.sh [out dir]
# Needs x86_64-w64-mingw32-gcc (Debian: gcc-mingw-w64-x86-64). The run needs Wine (Debian: wine64)
# and WANVIDEO_WIN_BLAS, the folder of libscipy_openblas.dll from the scipy-openblas32 win_amd64
# wheel (.ci/run fetches it); without them it says what is missing and stops after compiling.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
out="${1:-${TMPDIR:-/tmp}/wanvideo_vae_mingw}"
mkdir -p "$out"
cc() { x86_64-w64-mingw32-gcc -std=c11 -O2 -Wall -Wextra -Werror -Wno-unused-parameter -DWV_BLAS_SCIPY_PREFIX \
    -I"$root/csrc" "$@"; }
for f in "$root"/csrc/wv_*.c; do cc -c "$f" -o "$out/$(basename "$f" .c).obj"; done
cc -c "$here/test_core.c" -o "$out/test_core.obj"
echo "MinGW-w64: compiled $(ls "$out"/*.obj | wc -l) objects for Windows"

. "$here/wine.sh"
dll="${WANVIDEO_WIN_BLAS:-}/libscipy_openblas.dll"
if [ -z "$wine" ] || [ -z "${WANVIDEO_WIN_BLAS:-}" ] || [ ! -f "$dll" ]; then
    echo "Wine run skipped: needs Wine (found: ${wine:-none}) and WANVIDEO_WIN_BLAS with libscipy_openblas.dll"
    exit 0
fi
x86_64-w64-mingw32-gcc "$out"/*.obj "$dll" -o "$out/test_core.exe"
cp "$dll" "$out/"
cd "$out"
in_wine "$out/wineprefix" Wine 600 ./test_core.exe
