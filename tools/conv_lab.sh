#!/usr/bin/env bash
# Builds and runs tools/conv_lab.cu (cuDNN's speed on the decoder's 720p convolution shapes, and the
# ways of running a causal one) with the toolchain setup.py finds. Exit 77: no GPU to run on.
# BUILD_ONLY=1 stops after the build (CI checks that it compiles wherever nvcc is).
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${BUILD_DIR:-build/conv_lab}
mkdir -p "$OUTDIR"
CONFIG=$(bash tests/c/cuda_config.sh) || exit 1
eval "$CONFIG"
"$NVCC" -O2 -std=c++17 -Icsrc -Icuda -I"$TOOLKIT/include" -I"$CUDNN_INC" -gencode "arch=compute_$ARCH,code=sm_$ARCH" \
    tools/conv_lab.cu -o "$OUTDIR/conv_lab" -Xlinker "$CUDNN_LIB" -Xlinker -rpath,"$(dirname "$CUDNN_LIB")"
[ "${BUILD_ONLY:-0}" = 1 ] && exit 0
"$OUTDIR/conv_lab"
