#!/usr/bin/env bash
# Builds the C core and its test program with AddressSanitizer + UndefinedBehaviorSanitizer and runs it.
#   bash tests/c/run.sh [build dir]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
out="${1:-${TMPDIR:-/tmp}/wanvideo_vae_ctest}"
mkdir -p "$out"
read -r inc lib name < <(python3 -c "import scipy_openblas32 as s; print(s.get_include_dir(), s.get_lib_dir(), s.get_library())")
${CC:-gcc} -std=c11 -g -O1 -Wall -Wextra -Werror -Wno-unused-parameter \
    -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer \
    -DWV_BLAS_SCIPY_PREFIX -I"$root/csrc" -I"$inc" \
    "$root"/csrc/wv_*.c "$here/test_core.c" -L"$lib" -l"$name" -Wl,-rpath,"$lib" -lm -o "$out/test_core"
ASAN_OPTIONS=detect_leaks=1 "$out/test_core"
