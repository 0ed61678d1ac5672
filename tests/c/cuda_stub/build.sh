#!/usr/bin/env bash
# Compiles the stand-in CUDA runtime into OUTDIR: cuda_stub.o (against the toolkit's headers) and its
# arithmetic on_cpu.o (the backend's kernels against tests/c/cuda_on_cpu/); link both, with -pthread.
#   bash tests/c/cuda_stub/build.sh OUTDIR [compiler flags...]   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=$1
shift
CONFIG=$(bash tests/c/cuda_config.sh) || exit 1
eval "$CONFIG"
g++ -std=c++17 -Wall -Wextra -Werror "$@" -Icsrc -Icuda -I"$TOOLKIT/include" -I"$CUDNN_INC" -I"$CUBLAS_INC" \
    -c tests/c/cuda_stub/cuda_stub.cpp -o "$out/cuda_stub.o"
g++ -std=c++20 -Wall -Wextra -Werror -Wno-unused-function -Wno-unused-parameter -Wno-unknown-pragmas \
    -fno-strict-aliasing "$@" -Itests/c/cuda_on_cpu -Icsrc -Icuda -c tests/c/cuda_stub/on_cpu.cpp -o "$out/on_cpu.o"
