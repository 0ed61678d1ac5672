#!/usr/bin/env bash
# Builds and runs tools/host_cost.c: the CUDA backend's host cost for a full-size decode, on any
# machine with nvcc and the cuDNN / cuBLAS headers setup.py finds (no GPU; tests/c/cuda_stub/ stands
# in for the runtime). Takes a minute and a few GiB of host memory (the arena is host memory here).
#   bash tools/host_cost.sh [untiled|"2 GiB"|272]      the ops one by one (every plan, or the one named)
#   bash tools/host_cost.sh "2 GiB" buffers           ... and that plan's arena buffers of a MiB or more
#   WANVIDEO_CUDA_GRAPHS=1 bash tools/host_cost.sh   steps queued as CUDA graphs
# BUILD_ONLY=1 stops after the build.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${BUILD_DIR:-build/host_cost}
mkdir -p "$OUTDIR"
CONFIG=$(bash tests/c/cuda_config.sh) || exit 1
eval "$CONFIG"
inc="-Icsrc -Icuda -I$TOOLKIT/include -I$CUDNN_INC -I$CUBLAS_INC"
LINK=$(bash tests/c/cuda_stub/build.sh "$OUTDIR" -O2)
gcc -std=gnu11 -O2 -Wall -Wno-unused-function $inc -Itests/c -c tools/host_cost.c -o "$OUTDIR/host_cost.o"
g++ "$OUTDIR/host_cost.o" $LINK -o "$OUTDIR/host_cost"
[ "${BUILD_ONLY:-0}" = 1 ] && exit 0
"$OUTDIR/host_cost" "$@"
