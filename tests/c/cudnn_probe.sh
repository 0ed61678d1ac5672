#!/usr/bin/env bash
# Runs cuda/wv_cudnn_probe.h, the check the CUDA module makes before its first cuDNN call, on stand-ins
# for cuDNN 9's shim and graph library (tests/c/cudnn_stand_in.c): built for Linux with gcc, and for
# Windows with MinGW-w64 and run under Wine; five cases on each, each in a process of its own:
#   control  the shim beside its graph library, off the search path, called unasked: it aborts
#   beside   the same, asked first: the probe loads the graph library, and the call works
#   alone    the shim alone in a folder (a non-ASCII name): refused, the folder named in UTF-8
#   on-path  the shim alone, its graph library elsewhere on the search path: the call works
#   loaded-first  the shim beside its graph library, another copy of which was loaded first (PyTorch's):
#            the call works, and the copy beside the shim is not loaded as well
# The test program is compiled as C++ too (the CUDA backend includes the header from C++: g++, and MSVC
# on Windows), each compiler's warnings as errors.
#   bash tests/c/cudnn_probe.sh [out dir]
# Prints "SYSTEM CASE: ok" for each case passed; exit status 0 when all pass. Where MinGW-w64 or Wine is
# missing, the Windows half says so and is skipped.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
out="${1:-${TMPDIR:-/tmp}/wanvideo_vae_cudnn_probe}"
alone="alone-ünï"
flags=(-Wall -Wextra -Werror -Wno-unused-parameter -Wpedantic -I"$root/cuda")
export LC_ALL=C.UTF-8  # Wine reads the folder's name in the locale's encoding
failed=0

# verdict LABEL PATTERN OUTPUT [NOT]: "LABEL: ok" where OUTPUT matches PATTERN (and not the pattern NOT),
# else the output, and a failure
verdict() {
    if grep -q -- "$2" <<<"$3" && ! { [ -n "${4:-}" ] && grep -q -- "$4" <<<"$3"; }; then
        echo "$1: ok"
    else
        echo "$1: FAILED; the program said:"
        sed 's/^/    /' <<<"$3"
        failed=1
    fi
}

# cases SYSTEM RUN: RUN FOLDER EXPECTATION [SEARCH FOLDER] [FIRST FOLDER] runs the test on the shim in
# FOLDER (with SEARCH FOLDER on the search path; with FIRST FOLDER's graph library loaded first)
cases() {
    local system=$1 run=$2
    verdict "$system control" "Invalid handle. Cannot load symbol cudnnGetVersion" \
        "$($run beside unprobed 2>&1 || true)" "ok: called"
    verdict "$system beside" "ok: called: version 992801" "$($run beside loads 2>&1 || true)"
    verdict "$system alone" "ok: refused: cuDNN (.*$alone.*) cannot load its sub-library" \
        "$($run "$alone" refuses 2>&1 || true)"
    verdict "$system on-path" "ok: called: version 992801" "$($run "$alone" loads elsewhere 2>&1 || true)"
    verdict "$system loaded-first" "ok: called: version 992801" "$($run beside loads "" elsewhere 2>&1 || true)"
}

# lay_out DIR SHIM GRAPH: the shim with its graph library in beside/, alone in $alone/, the graph in elsewhere/
lay_out() {
    mkdir -p "$1/$alone" "$1/elsewhere"
    cp "$1/beside/$2" "$1/$alone/"
    cp "$1/beside/$3" "$1/elsewhere/"
}

lin="$out/linux"
mkdir -p "$lin/beside"
gcc -std=c11 "${flags[@]}" -fPIC -shared -Wl,-soname,libcudnn.so.99 "$here/cudnn_stand_in.c" \
    -o "$lin/beside/libcudnn.so.99" -ldl
gcc -std=c11 "${flags[@]}" -fPIC -shared -Wl,-soname,libcudnn_graph.so.99 -DWV_STAND_IN_GRAPH \
    "$here/cudnn_stand_in.c" -o "$lin/beside/libcudnn_graph.so.99"
gcc -std=c11 "${flags[@]}" "$here/test_cudnn_probe.c" -o "$lin/test_cudnn_probe" -ldl
g++ -std=c++17 "${flags[@]}" -fsyntax-only -x c++ "$here/test_cudnn_probe.c"
lay_out "$lin" libcudnn.so.99 libcudnn_graph.so.99
run_linux() {
    env -u LD_LIBRARY_PATH ${3:+LD_LIBRARY_PATH="$lin/$3"} "$lin/test_cudnn_probe" "$lin/$1/libcudnn.so.99" "$2" \
        ${4:+"$lin/$4/libcudnn_graph.so.99"}
}
cases Linux run_linux

. "$here/wine.sh"
if ! command -v x86_64-w64-mingw32-g++ >/dev/null || [ -z "$wine" ]; then
    echo "Windows run skipped: needs MinGW-w64's C and C++ compilers (x86_64-w64-mingw32-gcc, -g++) and Wine" \
        "(found: ${wine:-none})"
    exit "$failed"
fi
win="$out/windows"
mkdir -p "$win/beside"
x86_64-w64-mingw32-gcc -std=c11 "${flags[@]}" -shared "$here/cudnn_stand_in.c" -o "$win/beside/cudnn64_99.dll"
x86_64-w64-mingw32-gcc -std=c11 "${flags[@]}" -shared -DWV_STAND_IN_GRAPH "$here/cudnn_stand_in.c" \
    -o "$win/beside/cudnn_graph64_99.dll"
x86_64-w64-mingw32-gcc -std=c11 "${flags[@]}" -municode "$here/test_cudnn_probe.c" -o "$win/test_cudnn_probe.exe"
x86_64-w64-mingw32-g++ -std=c++17 "${flags[@]}" -municode -fsyntax-only -x c++ "$here/test_cudnn_probe.c"
lay_out "$win" cudnn64_99.dll cudnn_graph64_99.dll
windows_path() { printf 'Z:%s' "${1//\//\\}"; }
run_windows() {
    (
        cd "$win"  # the program's folder and the current one: neither holds the graph library
        if [ -n "${3:-}" ]; then export WINEPATH; WINEPATH=$(windows_path "$win/$3"); fi
        in_wine "$win/prefix" Windows 300 ./test_cudnn_probe.exe "$(windows_path "$win/$1/cudnn64_99.dll")" "$2" \
            ${4:+"$(windows_path "$win/$4/cudnn_graph64_99.dll")"}
    )
}
cases Windows run_windows
exit "$failed"
