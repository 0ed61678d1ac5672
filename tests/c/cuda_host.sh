#!/usr/bin/env bash
# Builds and runs tests/c/test_cuda_host.c: the CUDA backend's host side (every plan decoded through
# the CUDA tables) on a machine without a GPU, with tests/c/cuda_stub/ in place of the CUDA runtime,
# cuDNN and cuBLAS, under AddressSanitizer and UndefinedBehaviorSanitizer. Needs nvcc and the cuDNN
# and cuBLAS headers setup.py finds; no GPU, no CUDA library is loaded.
#   bash tests/c/cuda_host.sh [build dir]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUTDIR=${1:-${BUILD_DIR:-build/cuda_host}}
mkdir -p "$OUTDIR"
CONFIG=$(bash tests/c/cuda_config.sh) || exit 1
eval "$CONFIG"
# one flag a sanitizer: nvcc would split "address,undefined" at the comma
san="-fsanitize=address -fsanitize=undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
LINK=$(bash tests/c/cuda_stub/build.sh "$OUTDIR" -g -O1 $san)
inc="-Icsrc -Icuda -I$TOOLKIT/include -I$CUDNN_INC -I$CUBLAS_INC"
gcc -std=gnu11 -g -O1 -Wall -Wextra -Werror $san $inc -Itests/c -c tests/c/test_cuda_host.c -o "$OUTDIR/test_cuda_host.o"
g++ $san "$OUTDIR/test_cuda_host.o" $LINK -o "$OUTDIR/test_cuda_host"
# by default the equal-width convs of this small decoder all run by taps (2-frame caches); then every
# causal conv on a 3-frame ring, its taps turned in the weight scratch
ASAN_OPTIONS=detect_leaks=1 "$OUTDIR/test_cuda_host"
ASAN_OPTIONS=detect_leaks=1 WANVIDEO_CUDA_TAPS_MAX_CHANNELS=0 "$OUTDIR/test_cuda_host"
# and with the stub computing (kernels on the CPU, cuDNN's and cuBLAS's work by loops): each decode
# of a small frame against the CPU backend's, with the full-size decoder's mix of the two ways (its
# 96-channel stage by taps, its 192 and 384 ones on rings: here 8 by taps, 16 and 32 on rings)
ASAN_OPTIONS=detect_leaks=1 WANVIDEO_STUB_COMPUTE=2 WANVIDEO_CUDA_TAPS_MAX_CHANNELS=8 "$OUTDIR/test_cuda_host"
