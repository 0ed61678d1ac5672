#!/usr/bin/env bash
# Builds tests/c/test_backend_ops.cu (every CUDA op against the CPU op on random inputs) with the
# toolkit, cuDNN, cuBLAS and OpenBLAS that setup.py finds, and runs it. Exit 77: no GPU to run on.
# BUILD_ONLY=1 stops after the build (CI checks that it compiles wherever nvcc is).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUTDIR=${BUILD_DIR:-build/backend_ops}
mkdir -p "$OUTDIR"
CONFIG=$(bash tests/c/cuda_config.sh) || exit 1 # (a bare eval "$(...)" would hide the failure)
eval "$CONFIG"
CORE=$(ls csrc/wv_*.c)
OBJS=""
for f in $CORE; do
    o="$OUTDIR/$(basename "$f" .c).o"
    gcc -O2 -std=c11 -fPIC -DWV_BLAS_SCIPY_PREFIX=1 -Icsrc -I"$BLAS_INC" -c "$f" -o "$o"
    OBJS="$OBJS $o"
done
"$NVCC" -O2 -std=c++17 -Icsrc -Icuda -I"$TOOLKIT/include" -I"$CUDNN_INC" -I"$CUBLAS_INC" \
    -gencode "arch=compute_$ARCH,code=sm_$ARCH" tests/c/test_backend_ops.cu cuda/wv_backend_cuda.cu $OBJS \
    -o "$OUTDIR/test_backend_ops" -Xlinker "$CUDNN_LIB" -Xlinker "$CUBLAS_LIB" -L"$BLAS_DIR" -l"$BLAS_LIB" \
    -Xlinker -rpath,"$(dirname "$CUDNN_LIB")":"$(dirname "$CUBLAS_LIB")":"$BLAS_DIR"
[ "${BUILD_ONLY:-0}" = 1 ] && exit 0
"$OUTDIR/test_backend_ops"
