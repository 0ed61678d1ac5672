#!/usr/bin/env bash
# Builds tests/c/test_backend_ops.cu (every CUDA op against the CPU op) against the stand-in runtime
# of tests/c/cuda_stub/ and runs it with WANVIDEO_STUB_COMPUTE=1: the backend's kernels run on the
# CPU, compiled with tests/c/cuda_on_cpu/, and cuDNN's convolutions and cuBLAS's GEMMs are plain
# loops over what the descriptors say. So the CUDA backend's host side, its kernels and the way it
# describes its work to cuDNN and cuBLAS are checked op by op on any machine with nvcc, no GPU.
# What it cannot check is what only the real libraries and the GPU do (their algorithms, rounding,
# alignment rules); tests/c/backend_ops.sh does that where a GPU is. Built with UBSan: the stand-in's
# 16-byte vector types are aligned as on the GPU, so a kernel's misaligned vector load at a pointer
# the backend forms stops the run, as it would fault there. It runs twice: as the backend runs by
# default, then with WANVIDEO_CUDA_PAIRED_TAPS=1 (read once a process: the causal convs run by taps
# keep their caches themselves and run their taps in pairs), each run ending on its count of cases.
#   bash tests/c/backend_ops_on_cpu.sh [build dir]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUTDIR=${1:-${BUILD_DIR:-build/backend_ops_on_cpu}}
mkdir -p "$OUTDIR"
CONFIG=$(bash tests/c/cuda_config.sh) || exit 1
eval "$CONFIG"
inc="-Icsrc -Icuda -I$TOOLKIT/include -I$CUDNN_INC -I$CUBLAS_INC"
san="-fsanitize=undefined -fno-sanitize-recover=all"
# WV_CUDA_STUB: the program fails on what the stand-in reports (races, accesses, misuses), not only prints it.
# It compiles beside what it links.
"$NVCC" -O1 -std=c++17 $inc -DWV_CUDA_STUB -Itests/c/cuda_stub -cudart none -gencode "arch=compute_$ARCH,code=sm_$ARCH" \
    -c tests/c/test_backend_ops.cu -o "$OUTDIR/test_backend_ops.o" &
test_object=$!
LINK=$(bash tests/c/cuda_stub/build.sh "$OUTDIR" -O1 $san)
wait "$test_object"
g++ $san "$OUTDIR/test_backend_ops.o" $LINK -o "$OUTDIR/test_backend_ops"
WANVIDEO_STUB_COMPUTE=1 "$OUTDIR/test_backend_ops"
echo "== WANVIDEO_CUDA_PAIRED_TAPS=1"
WANVIDEO_CUDA_PAIRED_TAPS=1 WANVIDEO_STUB_COMPUTE=1 "$OUTDIR/test_backend_ops"
