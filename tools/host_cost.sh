#!/usr/bin/env bash
# Builds and runs tools/host_cost.c: the CUDA backend's host cost for a full-size decode, on any
# machine with nvcc and the cuDNN / cuBLAS headers setup.py finds (no GPU; tests/c/cuda_stub/ stands
# in for the runtime). Takes a minute and a few GiB of host memory (the arena is host memory here).
#   bash tools/host_cost.sh [untiled|2 GiB|272]      the ops one by one (every plan, or the one named)
#   WANVIDEO_CUDA_GRAPHS=1 bash tools/host_cost.sh   steps queued as CUDA graphs
# BUILD_ONLY=1 stops after the build.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${BUILD_DIR:-build/host_cost}
mkdir -p "$OUTDIR"
CONFIG=$(bash tests/c/cuda_config.sh) || exit 1
eval "$CONFIG"
inc="-Icsrc -Icuda -I$TOOLKIT/include -I$CUDNN_INC -I$CUBLAS_INC"
objs=""
for f in csrc/wv_util.c csrc/wv_model.c csrc/wv_plan.c csrc/wv_decode.c csrc/wv_backend_cpu.c csrc/wv_backends.c; do
    o="$OUTDIR/$(basename "$f" .c).o"
    gcc -std=c11 -O2 -Wall -DWV_BLAS_SCIPY_PREFIX=1 -Icsrc -I"$BLAS_INC" -c "$f" -o "$o"
    objs="$objs $o"
done
"$NVCC" -O2 -std=c++17 $inc -cudart none -gencode "arch=compute_$ARCH,code=sm_$ARCH" -c cuda/wv_backend_cuda.cu \
    -o "$OUTDIR/wv_backend_cuda.o"
bash tests/c/cuda_stub/build.sh "$OUTDIR" -O2
gcc -std=gnu11 -O2 -Wall -Wno-unused-function $inc -Itests/c -c tools/host_cost.c -o "$OUTDIR/host_cost.o"
g++ -pthread "$OUTDIR/host_cost.o" "$OUTDIR/wv_backend_cuda.o" "$OUTDIR/cuda_stub.o" "$OUTDIR/on_cpu.o" $objs \
    -L"$BLAS_DIR" -l"$BLAS_LIB" \
    -Wl,-rpath,"$BLAS_DIR" -lm -o "$OUTDIR/host_cost"
[ "${BUILD_ONLY:-0}" = 1 ] && exit 0
"$OUTDIR/host_cost" "$@"
