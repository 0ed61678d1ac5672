#!/usr/bin/env bash
# Builds tests/c/test_kernels_on_cpu.cpp (the CUDA kernels whose threads never cooperate, compiled for
# the host and run against the CPU backend's ops) with the sanitizers, and runs it. No CUDA needed.
#   bash tests/c/kernels_on_cpu.sh [build dir]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
out="${1:-${TMPDIR:-/tmp}/wanvideo_vae_kernels_on_cpu}"
mkdir -p "$out"
read -r inc lib name < <(python3 -c "import scipy_openblas32 as s; print(s.get_include_dir(), s.get_lib_dir(), s.get_library())")
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
for src in "$root"/csrc/wv_*.c; do
    ${CC:-gcc} -std=c11 -g -O1 -Wall -Wextra -Werror -Wno-unused-parameter $san -DWV_BLAS_SCIPY_PREFIX \
        -I"$root/csrc" -I"$inc" -c "$src" -o "$out/$(basename "$src" .c).o"
done
${CXX:-g++} -std=c++17 -g -O1 -Wall -Wextra -Werror -Wno-unused-parameter -Wno-unused-function -Wno-unknown-pragmas -fno-strict-aliasing \
    $san -I"$here/cuda_on_cpu" -I"$root/csrc" -I"$root/cuda" "$here/test_kernels_on_cpu.cpp" "$out"/wv_*.o \
    -L"$lib" -l"$name" -Wl,-rpath,"$lib" -lm -o "$out/test_kernels_on_cpu"
ASAN_OPTIONS=detect_leaks=1 "$out/test_kernels_on_cpu"
