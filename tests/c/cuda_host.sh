#!/usr/bin/env bash
# Builds and runs tests/c/test_cuda_host.c: the CUDA backend's host side (every plan decoded through
# the CUDA tables) on a machine without a GPU, with tests/c/cuda_stub/ in place of the CUDA runtime,
# cuDNN and cuBLAS, under AddressSanitizer and UndefinedBehaviorSanitizer. Needs nvcc and the cuDNN
# and cuBLAS headers setup.py finds; no GPU, no CUDA library is loaded.
#   bash tests/c/cuda_host.sh [build dir]
# With CUDA_HOST_VALGRIND=1 it builds without the sanitizers and runs the first of the runs below
# under valgrind's memcheck instead, which sees what they do not: a branch or a comparison on bytes
# never written (a recorded op's padding, say, which would make a step's graph never match); any
# error it reports, or a block definitely lost, fails the run.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUTDIR=${1:-${BUILD_DIR:-build/cuda_host}}
mkdir -p "$OUTDIR"
CONFIG=$(bash tests/c/cuda_config.sh) || exit 1
eval "$CONFIG"
# one flag a sanitizer: nvcc would split "address,undefined" at the comma
san="-fsanitize=address -fsanitize=undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
valgrind=${CUDA_HOST_VALGRIND:-0}
[ "$valgrind" = 1 ] && san=""
LINK=$(bash tests/c/cuda_stub/build.sh "$OUTDIR" -g -O1 $san)
inc="-Icsrc -Icuda -I$TOOLKIT/include -I$CUDNN_INC -I$CUBLAS_INC"
gcc -std=gnu11 -g -O1 -Wall -Wextra -Werror $san $inc -Itests/c -c tests/c/test_cuda_host.c -o "$OUTDIR/test_cuda_host.o"
g++ $san "$OUTDIR/test_cuda_host.o" $LINK -o "$OUTDIR/test_cuda_host"
if [ "$valgrind" = 1 ]; then
    exec valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite --num-callers=20 \
        "$OUTDIR/test_cuda_host"
fi
# Five runs, each a process on one core, its output and errors kept apart and passed on in this
# order at the end:
# - by default the equal-width convs of this small decoder all run by taps (2-frame caches);
# - then every causal conv on a 3-frame ring, its taps turned in the weight scratch;
# - with the stub computing (kernels on the CPU, cuDNN's and cuBLAS's work by loops): each decode
#   of a small frame against the CPU backend's, with the full-size decoder's mix of the two ways (its
#   96-channel stage by taps, its 192 and 384 ones on rings: here 8 by taps, 16 and 32 on rings);
# - the same with the convolutions through cuDNN's graph API (WANVIDEO_CUDA_GRAPH_API=1) where
#   its plans take them, the tests of the legacy calls' own ways excepted (they ask for those);
# - and the same with the taps run in pairs (WANVIDEO_CUDA_PAIRED_TAPS=1: the 8-channel convs keep
#   their caches themselves).
# A computing run takes about as long as the other two together, so those three run beside them.
run_test() { # name, then the run's settings (NAME=value)
    local name=$1
    shift
    env ASAN_OPTIONS=detect_leaks=1 "$@" "$OUTDIR/test_cuda_host" > "$OUTDIR/$name.out" 2> "$OUTDIR/$name.err"
}
run_test computing WANVIDEO_STUB_COMPUTE=2 WANVIDEO_CUDA_TAPS_MAX_CHANNELS=8 &
computing=$!
run_test graph_api WANVIDEO_STUB_COMPUTE=2 WANVIDEO_CUDA_TAPS_MAX_CHANNELS=8 WANVIDEO_CUDA_GRAPH_API=1 &
graph_api=$!
run_test paired WANVIDEO_STUB_COMPUTE=2 WANVIDEO_CUDA_TAPS_MAX_CHANNELS=8 WANVIDEO_CUDA_PAIRED_TAPS=1 &
paired=$!
failed=0
run_test by_taps || failed=1
run_test on_rings WANVIDEO_CUDA_TAPS_MAX_CHANNELS=0 || failed=1
wait "$computing" || failed=1
wait "$graph_api" || failed=1
wait "$paired" || failed=1
for name in by_taps on_rings computing graph_api paired; do
    cat "$OUTDIR/$name.out"
    cat "$OUTDIR/$name.err" >&2
done
exit "$failed"
