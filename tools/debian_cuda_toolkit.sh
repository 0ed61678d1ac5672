#!/usr/bin/env bash
# Assembles an older CUDA toolkit (nvcc, headers, cudart, cuBLAS) from Debian's non-free packages into
# a folder, installing nothing, so that a machine with only CUDA 13 can check that the CUDA backend
# still builds and passes its host-side tests with the toolkits of PyTorch's cu12x (and cu118) users
# (the nvidia-cuda-nvcc-cu12 wheels hold ptxas but no nvcc). Needs apt-get, dpkg and deb.debian.org.
#   bash tools/debian_cuda_toolkit.sh 12.4 [dir]    Debian 13's (default dir /tmp/cuda-12.4)
#   bash tools/debian_cuda_toolkit.sh 11.8 [dir]    Debian 12's; gcc 12 is newer than it supports:
#                                                    NVCC_APPEND_FLAGS=-allow-unsupported-compiler
#   CUDA_HOME=/tmp/cuda-12.4 PATH=/tmp/cuda-12.4/bin:$PATH bash tests/c/cuda_host.sh /tmp/ch12
# (also tests/c/backend_ops_on_cpu.sh, tests/c/cuda_python.sh, python setup.py build_ext).
set -euo pipefail
version=${1:?which CUDA: 12.4 or 11.8}
case "$version" in
    12.4) suite=trixie cudart=libcudart12 cublas="libcublas12 libcublaslt12" ;;
    11.8) suite=bookworm cudart=libcudart11.0 cublas="libcublas11 libcublaslt11" ;;
    *) echo "no Debian package of CUDA $version here: 12.4 or 11.8" >&2; exit 2 ;;
esac
top=$(realpath -m "${2:-/tmp/cuda-$version}")
# replaced whole below: only an empty folder or a toolkit this script made earlier
if [ -e "$top" ] && [ -n "$(ls -A "$top" 2>/dev/null)" ] && [ ! -f "$top/bin/nvcc.profile" ]; then
    echo "$top is there and is not a toolkit this script made: name an empty or new folder" >&2
    exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs" "$work/root"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main non-free" \
    > "$work/sources.list"
apt_opts=(-o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache" -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" update -qq
(cd "$work/debs" && apt-get "${apt_opts[@]}" download -qq nvidia-cuda-toolkit nvidia-cuda-dev "$cudart" \
    libnvvm4 libcu++-dev libcub-dev libthrust-dev $cublas)
for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$work/root"; done

# The layout nvcc expects of a toolkit: bin/ beside include/, lib64/ and nvvm/libdevice.
src="$work/root/usr"
rm -rf "$top"
mkdir -p "$top/bin" "$top/lib64" "$top/nvvm"
cp -r "$src/lib/nvidia-cuda-toolkit/bin/nvcc" "$src/lib/nvidia-cuda-toolkit/bin/cicc" "$src/lib/nvidia-cuda-toolkit/bin/crt" \
    "$top/bin/"
for tool in bin2c cudafe++ fatbinary nvlink nvprune ptxas cuobjdump nvdisasm cu++filt; do cp "$src/bin/$tool" "$top/bin/"; done
cp -r "$src/include" "$top/include"
cp -r "$src/lib/nvidia-cuda-toolkit/libdevice" "$top/nvvm/libdevice"
lib="$src/lib/x86_64-linux-gnu"
cp -a "$lib"/libcudart.so* "$lib"/libcublas.so* "$lib"/libcublasLt.so* "$lib"/libcudart_static.a "$lib"/libcudadevrt.a \
    "$lib"/libculibos.a "$lib"/libnvvm.so* "$top/lib64/"
cat > "$top/bin/nvcc.profile" <<'EOF'
TOP = $(_HERE_)/..
NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice
LD_LIBRARY_PATH += $(TOP)/lib64:
PATH += $(TOP)/bin:
INCLUDES += "-I$(TOP)/include" $(_SPACE_)
LIBRARIES =+ $(_SPACE_) "-L$(TOP)/lib64"
EOF
"$top/bin/nvcc" --version | tail -1
echo "CUDA $version toolkit in $top"
