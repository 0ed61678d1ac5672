#!/usr/bin/env bash
# Builds what a program on the stand-in runtime links (tests/c/test_cuda_host.c,
# tests/c/test_backend_ops.cu on the CPU, tools/host_cost.c) into OUTDIR, with the compiler flags
# given, and prints the objects: the C core and the CPU backend, the CUDA backend as nvcc compiles
# it (kernels included, never run; no CUDA runtime linked), cuda_stub.o (against the toolkit's
# headers) and on_cpu.o (the kernels again, against tests/c/cuda_on_cpu/), followed by the libraries
# they need (-pthread, OpenBLAS, libm): everything to put after the program's own object.
#   LINK=$(bash tests/c/cuda_stub/build.sh OUTDIR [compiler flags...])   (from the repository root)
#   g++ [flags] main.o $LINK -o program
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=$1
shift
CONFIG=$(bash tests/c/cuda_config.sh) || exit 1
eval "$CONFIG"
warn="-Wall -Wextra -Werror -Wno-unused-parameter"
inc="-Icsrc -Icuda -I$TOOLKIT/include -I$CUDNN_INC -I$CUBLAS_INC"
nvcc_flags="" # nvcc splits -Xcompiler's argument at commas, so each flag goes on its own
for f in "$@"; do nvcc_flags="$nvcc_flags -Xcompiler $f"; done
# the objects compile side by side, the longest first (on_cpu.o, then the CUDA backend); any failure fails
# the build
pids=()
compile() { "$@" & pids+=($!); }
compile g++ -std=c++20 $warn -Wno-unused-function -Wno-unknown-pragmas -fno-strict-aliasing "$@" \
    -Itests/c/cuda_on_cpu -Icsrc -Icuda -c tests/c/cuda_stub/on_cpu.cpp -o "$out/on_cpu.o"
compile "$NVCC" -std=c++17 $inc $nvcc_flags -cudart none -gencode "arch=compute_$ARCH,code=sm_$ARCH" \
    -c cuda/wv_backend_cuda.cu -o "$out/wv_backend_cuda.o"
compile g++ -std=c++17 $warn "$@" $inc -c tests/c/cuda_stub/cuda_stub.cpp -o "$out/cuda_stub.o"
objs=""
for f in csrc/wv_*.c; do
    o="$out/$(basename "$f" .c).o"
    compile gcc -std=c11 $warn "$@" -DWV_BLAS_SCIPY_PREFIX=1 -Icsrc -I"$BLAS_INC" -c "$f" -o "$o"
    objs="$objs $o"
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[ "$failed" = 0 ] || exit 1
echo "$objs $out/wv_backend_cuda.o $out/cuda_stub.o $out/on_cpu.o -pthread -L$BLAS_DIR -l$BLAS_LIB -Wl,-rpath,$BLAS_DIR -lm"
