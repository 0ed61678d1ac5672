#!/usr/bin/env bash
# Builds the C core with AddressSanitizer + UndefinedBehaviorSanitizer and runs its two test programs:
# test_core.c (the core and the CPU backend) and test_kernels_on_cpu.cpp (the CUDA kernels, compiled
# for the host with cuda_on_cpu/ standing in for CUDA's headers, against the CPU backend's ops; no
# CUDA needed); then test_core.c again under ThreadSanitizer, the CPU backend's team three threads
# (WANVIDEO_CPU_THREADS, whatever the CPUs). Exit status 0 when all three pass.
#   bash tests/c/run.sh [build dir]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
out="${1:-${TMPDIR:-/tmp}/wanvideo_vae_ctest}"
mkdir -p "$out"
read -r inc lib name < <(python3 -c "import scipy_openblas32 as s; print(s.get_include_dir(), s.get_lib_dir(), s.get_library())")
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
warn="-Wall -Wextra -Werror -Wno-unused-parameter"
for src in "$root"/csrc/wv_*.c; do
    ${CC:-gcc} -std=c11 -g -O1 $warn $san -DWV_BLAS_SCIPY_PREFIX -I"$root/csrc" -I"$inc" -c "$src" \
        -o "$out/$(basename "$src" .c).o"
done
link="-L$lib -l$name -Wl,-rpath,$lib -lm"
${CC:-gcc} -std=c11 -g -O1 $warn $san -I"$root/csrc" "$here/test_core.c" "$out"/wv_*.o $link -o "$out/test_core"
${CXX:-g++} -std=c++20 -pthread -g -O1 $warn -Wno-unused-function -Wno-unknown-pragmas -fno-strict-aliasing $san \
    -I"$here/cuda_on_cpu" -I"$root/csrc" -I"$root/cuda" "$here/test_kernels_on_cpu.cpp" "$out"/wv_*.o $link \
    -o "$out/test_kernels_on_cpu"
ASAN_OPTIONS=detect_leaks=1 "$out/test_core"
ASAN_OPTIONS=detect_leaks=1 "$out/test_kernels_on_cpu"
# ThreadSanitizer (it excludes AddressSanitizer): the team of threads the CPU backend's ops split over
mkdir -p "$out/tsan"
for src in "$root"/csrc/wv_*.c; do
    ${CC:-gcc} -std=c11 -g -O1 $warn -fsanitize=thread -DWV_BLAS_SCIPY_PREFIX -I"$root/csrc" -I"$inc" -c "$src" \
        -o "$out/tsan/$(basename "$src" .c).o"
done
${CC:-gcc} -std=c11 -g -O1 $warn -fsanitize=thread -I"$root/csrc" "$here/test_core.c" "$out"/tsan/wv_*.o $link \
    -o "$out/tsan/test_core"
TSAN_OPTIONS=halt_on_error=1 WANVIDEO_CPU_THREADS=3 "$out/tsan/test_core"
