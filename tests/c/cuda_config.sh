#!/usr/bin/env bash
# Prints, as shell assignments, the CUDA toolchain setup.py finds (nvcc, toolkit, cuDNN, cuBLAS, the
# newest arch) and the OpenBLAS of scipy-openblas32, for the scripts that build CUDA test programs:
#   CONFIG=$(bash tests/c/cuda_config.sh) || exit 1; eval "$CONFIG"
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 - <<'PY'
import shlex, sys
sys.argv = ["setup.py"]
import setup, scipy_openblas32
cfg = setup.cuda_config()
if not cfg:
    sys.exit("no CUDA toolchain (nvcc, cuDNN, cuBLAS) found")
values = dict(NVCC=cfg["nvcc"], TOOLKIT=cfg["toolkit"], CUDNN_INC=cfg["cudnn_inc"], CUDNN_LIB=cfg["cudnn_lib"],
              CUBLAS_INC=cfg["cublas_inc"], CUBLAS_LIB=cfg["cublas_lib"], BLAS_INC=scipy_openblas32.get_include_dir(),
              BLAS_DIR=scipy_openblas32.get_lib_dir(), BLAS_LIB=scipy_openblas32.get_library(),
              ARCH=cfg["archs"][-1])
for k, v in values.items():
    print(f"{k}={shlex.quote(str(v))}")
PY
