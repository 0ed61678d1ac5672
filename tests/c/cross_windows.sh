#!/usr/bin/env bash
# Compiles the C core (everything but the CPython module) for Windows with MinGW-w64, as a check
# that nothing POSIX-only crept in. Needs x86_64-w64-mingw32-gcc (Debian: gcc-mingw-w64-x86-64).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
out="${1:-${TMPDIR:-/tmp}/wanvideo_vae_mingw}"
mkdir -p "$out"
for f in "$root"/csrc/wv_*.c; do
    x86_64-w64-mingw32-gcc -std=c11 -O2 -Wall -Wextra -Werror -Wno-unused-parameter -DWV_BLAS_SCIPY_PREFIX \
        -I"$root/csrc" -c "$f" -o "$out/$(basename "$f" .c).obj"
done
x86_64-w64-mingw32-gcc -std=c11 -O2 -Wall -Wextra -Werror -Wno-unused-parameter -DWV_BLAS_SCIPY_PREFIX \
    -I"$root/csrc" -c "$here/test_core.c" -o "$out/test_core.obj"
echo "MinGW-w64: compiled $(ls "$out"/*.obj | wc -l) objects for Windows"
