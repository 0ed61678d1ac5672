"""Native checks that need external tools: the C core under AddressSanitizer, LeakSanitizer and
UndefinedBehaviorSanitizer; the CUDA kernels that can run on the host, against the CPU ops; a
Windows (MinGW-w64) build of the core and its C test, run under Wine, and of the CPython module, whose
Python tests a Windows CPython runs under Wine; a small decode from
Python under valgrind. They skip where the tool is missing, except in CI, which installs the tools
and sets WANVIDEO_REQUIRE_NATIVE_CHECKS=1 so that a missing tool fails instead."""
import glob
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest

from helpers import FIXTURES, REPO, load_setup_script, package_root, scratch_copy

REQUIRED = os.environ.get("WANVIDEO_REQUIRE_NATIVE_CHECKS") == "1"


def need(tool):
    if shutil.which(tool) is None:
        if REQUIRED:
            pytest.fail(f"{tool} is required for this check (WANVIDEO_REQUIRE_NATIVE_CHECKS=1)")
        pytest.skip(f"{tool} not found")


def run(cmd, **kw):
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, **kw)


def assert_compiles_cleanly(compiler, source, *flags):
    """`source` (relative to the repository) compiles with `compiler`, the build's warnings as errors."""
    r = run([compiler, "-fsyntax-only", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror", *flags,
             source])
    assert r.returncode == 0, source + ":\n" + r.stderr[-3000:]


def printed_by(py, code):
    """What Python `py` prints running `code`."""
    return subprocess.run([py, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(sys.platform == "win32", reason="bash scripts")
def test_c_core_under_sanitizers(tmp_path):
    """tests/c/run.sh: the core's C test, and the CUDA kernels that can run on the host (the head's
    head conv, the turning of a causal conv's taps) against the CPU ops; both under the sanitizers;
    then the core's test under ThreadSanitizer, the CPU backend's ops split over three threads."""
    need("gcc")
    need("g++")
    r = run(["bash", "tests/c/run.sh", str(tmp_path)])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert len(re.findall(r"^\d+ passed, 0 failed$", r.stdout, re.M)) == 3, r.stdout[-3000:]


@pytest.mark.skipif(sys.platform == "win32", reason="bash scripts")
def test_core_cross_compiles_for_windows_and_passes_its_test_under_wine(tmp_path):
    """tests/c/cross_windows.sh: the core and its C test built with MinGW-w64, and the test run under
    Wine where Wine and WANVIDEO_WIN_BLAS (a Windows build of the BLAS) are at hand; CI has both."""
    need("x86_64-w64-mingw32-gcc")
    r = run(["bash", "tests/c/cross_windows.sh", str(tmp_path)])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    if "Wine run skipped" in r.stdout:
        if REQUIRED:
            pytest.fail(r.stdout.strip().splitlines()[-1] + " (WANVIDEO_REQUIRE_NATIVE_CHECKS=1)")
        pytest.skip(r.stdout.strip().splitlines()[-1])
    assert re.search(r"^Wine: \d+ passed, 0 failed$", r.stdout, re.M), r.stdout[-3000:]


CRASHING_PROGRAM = r"""
#include <stdio.h>
#include <string.h>
#include <windows.h>
static DWORD WINAPI idle(LPVOID arg) { for (;;) Sleep(1000); return 0; }
/* Blocks of the process heap, every other one freed, overwritten from the first on: the allocations
 * after it fault inside the heap's code. */
static void crash_in_the_heap(void)
{
    HANDLE heap = GetProcessHeap();
    char *block[64];
    for (int i = 0; i < 64; i++) block[i] = HeapAlloc(heap, 0, 100 + 37 * i);
    for (int i = 1; i < 64; i += 2) HeapFree(heap, 0, block[i]);
    memset(block[0], 0x41, 3000);
    for (int i = 0; i < 1000; i++) {
        void *p = HeapAlloc(heap, 0, 50 + 13 * (i % 97));
        if (i % 3) HeapFree(heap, 0, p);
    }
}
int main(int argc, char **argv)
{
    volatile int *nowhere = NULL;
    for (int i = 0; i < 4; i++) CreateThread(NULL, 0, idle, NULL, 0, NULL);
    if (argc > 1 && !strcmp(argv[1], "hang")) {
        puts("about to hang");
        fflush(stdout);
        Sleep(INFINITE);
    }
    if (argc > 1 && !strcmp(argv[1], "heap")) {
        puts("about to crash in the heap");
        fflush(stdout);
        crash_in_the_heap();
        puts("the heap took it");
        return 0;
    }
    puts("about to crash");
    fflush(stdout);
    *nowhere = 1;
    return 0;
}
"""


@pytest.mark.skipif(sys.platform == "win32", reason="bash scripts")
def test_a_program_crashing_or_hanging_under_wine_fails_its_run(tmp_path):
    """tests/c/wine.sh's in_wine, which both Wine runs above go through: a Windows program that crashes
    fails the run with status 70 and says so, though Wine 8 reports the status of a crashed program
    read through a pipe as 0 about half the time (tried four times: each a crash). A crash inside the
    process heap, where Wine's debugger never reports and the program hangs, fails with status 70 too,
    Wine's note of the fault shown. One that runs past its limit is stopped there and fails with
    status 124, saying so."""
    need("x86_64-w64-mingw32-gcc")
    wine = run(["bash", "-c", ". tests/c/wine.sh; echo $wine"]).stdout.strip()
    if not wine:
        if REQUIRED:
            pytest.fail("Wine is required for this check (WANVIDEO_REQUIRE_NATIVE_CHECKS=1)")
        pytest.skip("Wine not found")
    (tmp_path / "crash.c").write_text(CRASHING_PROGRAM)
    exe = tmp_path / "crash.exe"
    subprocess.run(["x86_64-w64-mingw32-gcc", "-w", str(tmp_path / "crash.c"), "-o", str(exe)], check=True)
    script = '. tests/c/wine.sh; for i in 1 2 3 4; do in_wine "$1" Crash 120 "$2"; echo "status $?"; done'
    r = run(["bash", "-c", script, "in_wine", str(tmp_path / "prefix"), str(exe)], timeout=600)
    assert r.stdout.count("Crash: about to crash") == 4, r.stdout[-3000:]
    assert r.stdout.count("Crash: the program crashed (Wine's debugger's report above; Wine said exit status ") == 4
    assert re.findall(r"^status (\d+)$", r.stdout, re.M) == ["70"] * 4, r.stdout[-3000:]
    assert r.stdout.count("Crash: wine: Unhandled page fault on write access to 0000000000000000") == 4, r.stdout
    script = ('. tests/c/wine.sh; in_wine "$1" Heap 20 "$2" heap; echo "status $?"; '
              'in_wine "$1" Hang 10 "$2" hang; echo "status $?"')
    r = run(["bash", "-c", script, "in_wine", str(tmp_path / "prefix"), str(exe)], timeout=120)
    lines = r.stdout.splitlines()
    assert lines[0] == "Heap: about to crash in the heap", r.stdout
    assert lines[1].startswith("Heap: wine: Unhandled page fault"), r.stdout
    assert lines[-4] == "status 70" and "Heap: the heap took it" not in lines, r.stdout
    assert lines[-3:] == ["Hang: about to hang", "Hang: stopped after 10 s without an end (a hang; or a machine far "
                          "slower than this limit allows)", "status 124"], r.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="bash scripts")
def test_the_cudnn_probe_on_stand_ins_for_linux_and_windows(tmp_path):
    """tests/c/cudnn_probe.sh: cuda/wv_cudnn_probe.h, which keeps a cuDNN 9 whose graph library cannot load
    from aborting the process at its first call, on stand-ins for cuDNN's shim and graph library, on Linux
    and on Windows (MinGW-w64, under Wine): the control (the shim called unasked aborts), the graph library
    loaded from beside the shim, the shim alone refused (a non-ASCII folder, named in UTF-8), the graph
    library found on the search path, one loaded first left the only one loaded. Each case but the
    control was shown to fail, on both systems, with the step of the probe it tests taken out."""
    need("gcc")
    need("g++")
    r = run(["bash", "tests/c/cudnn_probe.sh", str(tmp_path)], timeout=900)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-3000:]
    systems = ["Linux"]
    if "Windows run skipped" in r.stdout:
        if REQUIRED:
            pytest.fail(r.stdout.strip().splitlines()[-1] + " (WANVIDEO_REQUIRE_NATIVE_CHECKS=1)")
    else:
        systems.append("Windows")
    cases = ("control", "beside", "alone", "on-path", "loaded-first")
    passed = [f"{system} {case}: ok" for system in systems for case in cases]
    assert r.stdout.split("\n")[:len(passed)] == passed, r.stdout[-5000:]
    if len(systems) == 1:
        pytest.skip(r.stdout.strip().splitlines()[-1] + " (Linux passed)")


@pytest.mark.skipif(sys.platform == "win32", reason="bash scripts")
def test_the_module_built_for_windows_passes_the_python_tests_under_wine(tmp_path):
    """tests/c/windows_python.sh: the CPython module built with MinGW-w64 against a Windows CPython and
    NumPy, and the Python tests (engine, tiling, errors, fuzz, CLI, workflows, ComfyUI nodes; with
    PyTorch's Windows CPU wheel in CI) run by that Python under Wine, where Wine, WANVIDEO_WIN_PYTHON
    and WANVIDEO_WIN_SITE are at hand (CI)."""
    need("x86_64-w64-mingw32-gcc")
    r = run(["bash", "tests/c/windows_python.sh", str(tmp_path)], timeout=2400)
    if "Windows Python run skipped" in r.stdout:
        if REQUIRED:
            pytest.fail(r.stdout.strip().splitlines()[-1] + " (WANVIDEO_REQUIRE_NATIVE_CHECKS=1)")
        pytest.skip(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-3000:]
    passed = re.search(r"^Windows: (\d+) passed(, \d+ skipped)? in ", r.stdout, re.M)
    assert passed and int(passed.group(1)) >= (400 if REQUIRED else 300), r.stdout[-3000:]  # torch in CI


@pytest.mark.skipif(sys.platform == "win32", reason="bash scripts")
def test_cuda_ops_against_the_cpu_ops(tmp_path):
    """tests/c/test_backend_ops.cu: every CUDA op against the CPU op. Built wherever the CUDA build is
    required (CI with nvcc), run where a GPU is (exit 77, skipped, elsewhere)."""
    if os.environ.get("WANVIDEO_REQUIRE_CUDA_BUILD") != "1":
        pytest.skip("the CUDA toolchain is not required here (WANVIDEO_REQUIRE_CUDA_BUILD)")
    env = dict(os.environ, BUILD_DIR=str(tmp_path), WANVIDEO_CUDA_ARCHS=os.environ.get("WANVIDEO_CUDA_ARCHS", "90"))
    r = run(["bash", "tests/c/backend_ops.sh"], env=env)
    assert r.returncode in (0, 77), r.stdout[-3000:] + r.stderr[-3000:]
    if r.returncode == 77:
        pytest.skip(r.stdout.strip())
    assert re.search(r"^\d+ cases, 0 failed$", r.stdout, re.M)


STAND_IN_SANITIZER = r"""#!/usr/bin/env bash
# compute-sanitizer's stand-in: says what it was asked to run; FAKESAN=clean|error|refuse|late_error|slow
# (late_error, slow: cut short by the time limit, which gpu_check's `timeout` reports as 124)
args=()
while [ $# -gt 0 ]; do
    case $1 in
    --tool | --error-exitcode | --print-limit | --report-api-errors | --kernel-name) args+=("$1=$2"); shift 2 ;;
    *) args+=("$1"); shift ;;
    esac
done
case $FAKESAN in
refuse) echo "========= Error: Device not supported"; exit 1 ;;
error) echo "========= Invalid __global__ read of size 4 bytes"; echo "========= ERROR SUMMARY: 1 error"; exit 86 ;;
late_error) echo "========= COMPUTE-SANITIZER"; echo "========= Invalid __global__ write of size 2 bytes"; exit 124 ;;
slow) echo "========= COMPUTE-SANITIZER"; exit 124 ;;
*) echo "ran: ${args[*]}"; echo "with: WV_OPS_DTYPE=${WV_OPS_DTYPE-} WANVIDEO_CUDA_DIRECT_CONV=${WANVIDEO_CUDA_DIRECT_CONV-}"
   echo "========= ERROR SUMMARY: 0 errors" ;;
esac
"""


@pytest.fixture(scope="module")
def gpu_check_copy(tmp_path_factory):
    """A copy of the sources with tools/ and tests/c/, for tools/gpu_check.sh's dry runs
    (GPU_CHECK_ANYWAY=1: its logic without a GPU), which build in place; shared so that they build once."""
    if sys.platform == "win32":
        pytest.skip("bash scripts")
    if os.environ.get("WANVIDEO_REQUIRE_CUDA_BUILD") != "1":
        pytest.skip("the CUDA toolchain is not required here (WANVIDEO_REQUIRE_CUDA_BUILD)")
    return scratch_copy(tmp_path_factory.mktemp("gpu_check"), folders=("tools", os.path.join("tests", "c")))


def test_the_gpu_checks_sanitize_step_on_a_stand_in_sanitizer(gpu_check_copy, tmp_path):
    """tools/gpu_check.sh's sanitize step (GPU_CHECK_ANYWAY=1: its logic without a GPU), on a copy of the
    sources, with a stand-in for compute-sanitizer: the op-by-op program under memcheck, and under
    racecheck once per activation type (the 16-bit ones with every convolution on our direct kernel:
    cuDNN's 16-bit engines fault under racecheck), and a small decode untiled and in tiles when all is
    clean; a finding stops it and fails the check, also one reported before the run's time limit cut it
    short; runs cut short with nothing found are named ("not all checked"); a machine the tool refuses
    makes it n/a, not a failure. A GPU session's minutes are not spent on its bugs. Runs wherever the
    CUDA build is required (CI with nvcc)."""
    src = gpu_check_copy
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "compute-sanitizer").write_text(STAND_IN_SANITIZER)
    (tmp_path / "bin" / "compute-sanitizer").chmod(0o755)
    said = {}
    for mode in ("clean", "error", "refuse", "late_error", "slow"):
        out = tmp_path / f"out_{mode}"
        env = dict(os.environ, FAKESAN=mode, GPU_CHECK_ANYWAY="1", OUT=str(out), WANVIDEO_CUDA_ARCHS="90",
                   PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
        r = subprocess.run(["bash", "tools/gpu_check.sh", "run", "sanitize"], cwd=src, capture_output=True, text=True,
                           env=env, timeout=900)
        log = (out / "native.log").read_text() if (out / "native.log").exists() else ""
        said[mode] = (r.returncode, r.stdout, log)
    status, printed, log = said["clean"]
    assert status == 0 and "sanitize 0 " in printed and printed.count("ERROR SUMMARY: 0 errors") == 6, printed[-3000:]
    ops = "build/backend_ops/test_backend_ops"
    given = "ran: --error-exitcode=86 --print-limit=10 --report-api-errors=no"
    assert f"{given} --tool=memcheck {ops}" in log, log[-3000:]
    raced = re.findall(rf"^{given} --tool=racecheck --kernel-name=regex=\((\S+)\) (\S+)\n"
                       r"with: WV_OPS_DTYPE=(\w*) WANVIDEO_CUDA_DIRECT_CONV=(\w*)$", log, re.M)
    assert [r[1:] for r in raced] == [(ops, "float32", ""), (ops, "float16", "1"), (ops, "bfloat16", "1")], log[-3000:]
    ours = raced[0][0].split("|")  # racecheck on the kernels of cuda/ alone, every one of them
    assert "direct_conv_kernel" in ours and "write_output_kernel" in ours and len(ours) >= 10, ours
    for tile in (0, 78):
        assert (f"{given} --tool=memcheck python3 -m wanvideo_vae decode --device cuda --precision bf16 "
                f"--random-shape 2 12 16 --tile {tile} --quiet") in log
    status, printed, log = said["error"]
    assert status == 1 and "sanitize 86 " in printed and printed.count("== sanitize, ") == 1, printed[-3000:]
    assert "Invalid __global__ read of size 4 bytes" in log
    status, printed, log = said["refuse"]
    assert status == 0 and "sanitize n/a (compute-sanitizer: Device not supported)" in printed, printed[-3000:]
    status, printed, log = said["late_error"]  # what memcheck said before the time limit counts
    assert status == 1 and "sanitize 86 " in printed and printed.count("== sanitize, ") == 1, printed[-3000:]
    status, printed, log = said["slow"]
    assert status == 0 and printed.count("== sanitize, ") == 6, printed[-3000:]
    raced = ", ".join(f"op tests {dt}, racecheck (our kernels) (its time limit)"
                      for dt in ("float32", "float16", "bfloat16"))
    assert (f"sanitize 0 (nothing found, not all checked: op tests, memcheck (its time limit), {raced}, "
            "decode, tile 0 (its time limit), decode, tile 78 (its time limit))") in printed


def test_the_gpu_checks_cpu_step(gpu_check_copy, tmp_path):
    """tools/gpu_check.sh's cpu step, asked for alone ("run cpu"; on small latents here): a decode per
    thread count, 1, 2, 4, ... up to the CPUs and the CPUs themselves, each timed, each held to the
    1-thread frames; a decode that fails fails the check, saying why. Not in the default steps."""
    def check(shape):
        env = dict(os.environ, GPU_CHECK_ANYWAY="1", GPU_CHECK_CPU_SHAPE=shape, OUT=str(tmp_path / "out"),
                   WANVIDEO_CUDA_ARCHS="90")
        return subprocess.run(["bash", "tools/gpu_check.sh", "run", "cpu"], cwd=gpu_check_copy, capture_output=True,
                              text=True, env=env, timeout=900)
    r = check("1 4 4")
    cpus, counts, n = int(subprocess.check_output(["nproc"], text=True)), [], 1
    while n <= cpus:
        counts.append(n)
        n = cpus if n < cpus < 2 * n else 2 * n
    assert re.findall(r"^cpu threads (\d+): [\d.]+ s \(.*GFLOP/s", r.stdout, re.M) == [str(c) for c in counts], r.stdout
    compared = re.findall(r"^cpu (\d+) threads vs 1: max \|diff\| \S+, PSNR \S+ dB \(ok: tolerance 1e-05\)$", r.stdout,
                          re.M)
    assert compared == [str(c) for c in counts[1:]], r.stdout
    assert r.returncode == 0 and "cpu 0 (" in r.stdout and "ops skipped, tests skipped" in r.stdout, r.stdout[-3000:]
    assert "== cpu, WANVIDEO_CPU_THREADS=1" in (tmp_path / "out" / "profile.txt").read_text()
    r = check("1 0 4")
    assert r.returncode == 1 and "cpu 2 (" in r.stdout, r.stdout[-3000:]
    said = "cpu threads 1: exit 2: python -m wanvideo_vae decode: error: argument --random-shape: 0: must be at least 1"
    assert said in r.stdout, r.stdout[-3000:]


# tests/test_cuda.py's tests of what the backend does around the arithmetic (quick on the stub): the
# whole file passes there too, in tens of minutes (README, "The GPU tests, without a GPU").
STUB_SUBSET = ("overflowing or allocation_failure or pageable or close_gives or interrupt or threads or "
               "direct_convolution or missing_device or default_budget or info_reports or uint8_frames or "
               "too_large_for_one_cudnn or names_each_cache")


@pytest.mark.skipif(sys.platform == "win32", reason="bash scripts")
def test_gpu_tests_on_the_stub(tmp_path):
    """tests/c/cuda_python.sh: part of tests/test_cuda.py with wanvideo_vae._cuda built against the
    computing stub: device memory back to its level, allocation and pinning failures, close(), the
    interrupt, threads, the direct kernel, overflow, info's report of the GPU, the plans of frames too
    large for cuDNN and the caches' frames. A test's own bug shows here, before a GPU session
    spends its minutes on it. Runs wherever the CUDA build is required (CI with nvcc)."""
    if os.environ.get("WANVIDEO_REQUIRE_CUDA_BUILD") != "1":
        pytest.skip("the CUDA toolchain is not required here (WANVIDEO_REQUIRE_CUDA_BUILD)")
    env = dict(os.environ, PYTHON=sys.executable, WANVIDEO_CUDA_ARCHS=os.environ.get("WANVIDEO_CUDA_ARCHS", "90"))
    r = run(["bash", "tests/c/cuda_python.sh", str(tmp_path), "-k", STUB_SUBSET, "-rA"], env=env, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # what the stand-in saw wrong (a race between streams, an access outside every allocation) fails the run, as
    # it fails the C programs run on it; -rA shows each test's captured output
    seen = [line for line in (r.stdout + r.stderr).splitlines() if "cuda stub:" in line]
    assert not seen, seen[:10]
    passed = set(re.findall(r"^PASSED \S+::(test_\w+)", r.stdout, re.M))  # each of the subset, by name
    assert len(passed) == len(STUB_SUBSET.split(" or ")), (sorted(passed), r.stdout[-3000:])


@pytest.mark.skipif(sys.platform == "win32", reason="bash scripts")
def test_cuda_backend_host_side_without_a_gpu(tmp_path):
    """tests/c/test_cuda_host.c: every kind of plan decoded through the CUDA tables with a stand-in
    CUDA runtime, cuDNN and cuBLAS (tests/c/cuda_stub/), under the sanitizers: no error, every
    convolution, copy and GEMM inside one arena buffer or allocation, no race between streams,
    allocation failures and the runtime's faults (a launch refused, a kernel faulting, a graph capture
    invalidated, a create failing) clean, nothing left allocated; then with the stub computing on the CPU, each
    small decode equal to the CPU backend's, by the legacy cuDNN calls, through the graph API and with the
    taps run in pairs. Runs wherever the CUDA build is required (CI with nvcc); no GPU needed."""
    if os.environ.get("WANVIDEO_REQUIRE_CUDA_BUILD") != "1":
        pytest.skip("the CUDA toolchain is not required here (WANVIDEO_REQUIRE_CUDA_BUILD)")
    env = dict(os.environ, WANVIDEO_CUDA_ARCHS=os.environ.get("WANVIDEO_CUDA_ARCHS", "90"))
    r = run(["bash", "tests/c/cuda_host.sh", str(tmp_path)], env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # five times: the default widths by taps, every causal conv on a 3-frame ring, the stub computing,
    # computing with the convolutions through cuDNN's graph API, and computing with the taps in pairs
    assert len(re.findall(r"^\d+ passed, 0 failed$", r.stdout, re.M)) == 5, r.stdout[-3000:]
    assert len(re.findall(r"^ok .*max \|CUDA on the stub - CPU\|", r.stdout, re.M)) >= 18, r.stdout[-3000:]


@pytest.mark.skipif(sys.platform == "win32", reason="bash scripts")
def test_cuda_backend_host_side_under_valgrind(tmp_path):
    """The same program's first run (the default widths by taps, step graphs among its tests) built
    without the sanitizers, under valgrind's memcheck: no branch or comparison on bytes never written
    (a recorded op's padding compared would leave a step's graph never matched), no invalid access,
    no block definitely lost."""
    if os.environ.get("WANVIDEO_REQUIRE_CUDA_BUILD") != "1":
        pytest.skip("the CUDA toolchain is not required here (WANVIDEO_REQUIRE_CUDA_BUILD)")
    need("valgrind")
    env = dict(os.environ, CUDA_HOST_VALGRIND="1", WANVIDEO_CUDA_ARCHS=os.environ.get("WANVIDEO_CUDA_ARCHS", "90"))
    r = run(["bash", "tests/c/cuda_host.sh", str(tmp_path)], env=env, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert re.search(r"^\d+ passed, 0 failed$", r.stdout, re.M), r.stdout[-3000:]
    assert "ERROR SUMMARY: 0 errors" in r.stderr, r.stderr[-3000:]  # definite leaks count as errors


@pytest.mark.skipif(sys.platform == "win32", reason="bash scripts")
def test_cuda_ops_against_the_cpu_ops_without_a_gpu(tmp_path):
    """tests/c/test_backend_ops.cu on the stand-in runtime computing (tests/c/backend_ops_on_cpu.sh):
    every CUDA op, its kernels run on the CPU and cuDNN's and cuBLAS's work done by loops over what
    the backend's descriptors say, against the CPU backend's op, in the three precisions; then again
    with the taps run in pairs (WANVIDEO_CUDA_PAIRED_TAPS=1), whose convolutions must show as kept by
    the backend. Runs wherever the CUDA build is required (CI with nvcc); no GPU needed."""
    if os.environ.get("WANVIDEO_REQUIRE_CUDA_BUILD") != "1":
        pytest.skip("the CUDA toolchain is not required here (WANVIDEO_REQUIRE_CUDA_BUILD)")
    env = dict(os.environ, WANVIDEO_CUDA_ARCHS=os.environ.get("WANVIDEO_CUDA_ARCHS", "90"))
    r = run(["bash", "tests/c/backend_ops_on_cpu.sh", str(tmp_path)], env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    default, paired = r.stdout.split("== WANVIDEO_CUDA_PAIRED_TAPS=1\n")
    for out in default, paired:
        m = re.search(r"^(\d+) cases, (\d+) failed$", out, re.M)
        assert m and int(m.group(1)) > 400 and m.group(2) == "0", out[-3000:]
    assert "(taps apart)" in default and "(kept by the backend)" not in default, default[-3000:]
    assert "(kept by the backend)" in paired and "(taps apart)" not in paired, paired[-3000:]


@pytest.mark.skipif(sys.platform == "win32", reason="bash scripts")
@pytest.mark.parametrize("script", ["tools/conv_lab.sh", "tools/host_cost.sh"])
def test_cuda_tools_compile(tmp_path, script):
    """The measuring tools must keep compiling wherever the CUDA build is required:
    tools/conv_lab.cu (cuDNN's speed on the 720p shapes, run by tools/gpu_check.sh) and
    tools/host_cost.c (the host side's cost of a full-size decode, on the stub runtime)."""
    if os.environ.get("WANVIDEO_REQUIRE_CUDA_BUILD") != "1":
        pytest.skip("the CUDA toolchain is not required here (WANVIDEO_REQUIRE_CUDA_BUILD)")
    env = dict(os.environ, BUILD_DIR=str(tmp_path), BUILD_ONLY="1",
               WANVIDEO_CUDA_ARCHS=os.environ.get("WANVIDEO_CUDA_ARCHS", "90"))
    r = run(["bash", script], env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def test_small_decode_under_valgrind_leaks_nothing_of_ours():
    """Memory errors and definite leaks whose stack passes through the extension fail the test. The
    interpreter's own exit-time losses (CPython does not free everything) and the dynamic loader's
    known false positives (strncmp over rpath strings) are not ours."""
    need("valgrind")
    r = run(["valgrind", "--leak-check=full", "--show-leak-kinds=definite", "--num-callers=30",
             sys.executable, os.path.join("tools", "leak_probe.py")],
            env={**os.environ, "PYTHONMALLOC": "malloc", "PYTHONPATH": package_root()},
            timeout=900)
    assert r.returncode == 0 and "leak probe done" in r.stdout, r.stderr[-3000:]
    records = re.split(r"\n==\d+== \n", r.stderr)
    problems = ("definitely lost", "Invalid read", "Invalid write", "uninitialised", "Invalid free")
    ours = [rec for rec in records if any(p in rec for p in problems) and re.search(r"wanvideo_vae[/\\]_C", rec)]
    assert not ours, "\n\n".join(ours)[:8000]


# Run in a venv with NumPy 1.26: the tiny fixture decoded untiled and in tiles against its golden
# output, a progress callback stopping the decode with np.False_ (the one NumPy scalar the module
# reads), and the float16 latents of a strided view.
NUMPY_1_DECODE = r"""
import os
import sys
import numpy as np
import wanvideo_vae as wv
assert np.__version__.startswith("1."), np.__version__
d = np.load(sys.argv[1])
weights = {k[len("weights/"):]: d[k] for k in d.files if k.startswith("weights/")}
dec = wv.Decoder(weights, mean=d["mean"], std=d["std"])
expected = d["expected_raw"].transpose(1, 2, 3, 0)
untiled = dec.decode(d["latents"], raw=True, enable_vae_tiling=False)
tiles = dict(tile_x=24, tile_y=24, tile_stride_x=8, tile_stride_y=8)
assert dec.plan(*d["latents"].shape[1:], **tiles)["n_tiles"] > 1
tiled = dec.decode(d["latents"], raw=True, **tiles)
assert np.abs(untiled - expected).max() <= 1e-4 and np.abs(tiled - expected).max() <= 1e-4
wide = np.zeros(d["latents"].shape[:-1] + (2 * d["latents"].shape[-1],), np.float16)
wide[..., ::2] = d["latents"]
half = dec.decode(wide[..., ::2], raw=True, enable_vae_tiling=False)
assert np.abs(half - dec.decode(d["latents"].astype(np.float16), raw=True, enable_vae_tiling=False)).max() == 0
try:
    dec.decode(d["latents"], progress=lambda done, total: np.False_)
    raise SystemExit("np.False_ from progress did not stop the decode")
except wv.DecodeInterrupted:
    pass
print("numpy", np.__version__, "ok, wanvideo_vae from", os.path.dirname(wv.__file__))
"""


def test_the_c_sources_compile_under_clang_without_a_warning():
    """macOS builds with clang, whose warnings differ from gcc's: the core, the two CPython modules and the
    core's C test compile under clang with the build's warnings as errors (its -Wmissing-field-initializers
    once caught a table's rows written with five fields of six). Python's and NumPy's headers are theirs.
    Pedantic C11 without variable length arrays too: MSVC's C compiler (`/std:c11`, not run here) has no
    VLAs and no GNU extensions, which gcc and MinGW-w64 take without a word."""
    need("clang")
    import numpy
    import scipy_openblas32
    includes = ["-isystem", sysconfig.get_paths()["include"], "-isystem", numpy.get_include(),
                "-isystem", scipy_openblas32.get_include_dir(), "-Icsrc", "-Icuda"]
    sources = sorted(os.path.relpath(f, REPO) for f in glob.glob(os.path.join(REPO, "csrc", "*.c")))
    for src in sources + ["cuda/module_cuda.c", "tests/c/test_core.c", "tests/c/test_cudnn_probe.c"]:
        assert_compiles_cleanly("clang", src, "-pedantic", "-Wvla", "-DWV_BLAS_SCIPY_PREFIX", *includes)


@pytest.mark.skipif(sys.platform == "win32", reason="MSVC itself compiles it there")
def test_the_cuda_backends_host_code_is_what_msvc_compiles_too(monkeypatch):
    """On Windows nvcc hands the CUDA backend's host code to MSVC (`cl /std:c++17`), which refuses what
    g++ takes as extensions: variable length arrays, designated initializers (C++20), compound literals.
    No MSVC runs here, so the host code is compiled by g++ with -Wpedantic -Wvla, and a warning in our
    sources fails (each line marker nvcc writes is warned of as a GNU extension: those are left out).
    Runs wherever the CUDA build is required (CI with nvcc); no GPU needed."""
    if os.environ.get("WANVIDEO_REQUIRE_CUDA_BUILD") != "1":
        pytest.skip("the CUDA toolchain is not required here (WANVIDEO_REQUIRE_CUDA_BUILD)")
    monkeypatch.chdir(REPO)  # setup.py lists csrc/ when loaded
    setup = load_setup_script()
    cfg = setup.cuda_config()
    assert cfg, "setup.py found no CUDA toolchain, yet WANVIDEO_REQUIRE_CUDA_BUILD=1"
    arch = cfg["archs"][0]
    r = run([cfg["nvcc"], "-c", "cuda/wv_backend_cuda.cu", "-o", os.devnull, "-O0", "-std=c++17", "-Icsrc", "-Icuda",
             *("-I" + folder for folder in setup.cuda_include_order(cfg)),
             "-gencode", f"arch=compute_{arch},code=compute_{arch}", "-Xcompiler", "-Wpedantic,-Wvla,-Wall"])
    assert r.returncode == 0, r.stderr[-3000:]
    ours = re.compile(r"^(cuda|csrc)/[^:]+:\d+:\d+: (warning|error): (?!style of line directive)", re.M)
    assert not ours.findall(r.stderr), "\n".join(line for line in r.stderr.splitlines() if ours.match(line))


@pytest.mark.skipif(sys.platform == "win32", reason="venv layout")
def test_the_module_built_here_runs_under_numpy_1(tmp_path):
    """Many ComfyUI installs keep NumPy 1.26 (custom nodes pin numpy<2) while pip builds the
    extension against the newest NumPy (build isolation): the module must import and decode there,
    and compile against NumPy 1.26's headers for a build without isolation."""
    import wanvideo_vae
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    r = subprocess.run([py, "-m", "pip", "install", "-q", "numpy==1.26.4", "scipy-openblas32"],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        message = "could not install numpy 1.26.4: " + r.stderr[-500:]
        pytest.fail(message) if REQUIRED else pytest.skip(message)
    pkg = tmp_path / "pkg" / "wanvideo_vae"
    shutil.copytree(os.path.dirname(wanvideo_vae.__file__), pkg, ignore=shutil.ignore_patterns("_cuda*", "__pycache__"))
    r = subprocess.run([py, "-c", NUMPY_1_DECODE, os.path.join(FIXTURES, "wan21_tiny.npz")], capture_output=True,
                       text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(pkg.parent)}, timeout=600)
    assert r.returncode == 0 and "numpy 1.26.4 ok" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
    assert f"from {pkg}" in r.stdout, r.stdout  # the copy, not a source tree in the way

    need("gcc")
    numpy_1_include = printed_by(py, "import numpy; print(numpy.get_include())")
    assert_compiles_cleanly("gcc", "csrc/module.c", "-I" + sysconfig.get_paths()["include"], "-I" + numpy_1_include,
                            "-Icsrc")


def python_of_version(version):
    """An interpreter of Python `version` ("3.13") on this machine, or None: pyenv's, else one on PATH that
    runs and says that version (a pyenv shim of a version not selected does not run)."""
    found = []
    for root in filter(None, (os.environ.get("PYENV_ROOT"), os.path.expanduser("~/.pyenv"))):
        found += sorted(glob.glob(os.path.join(root, "versions", version + ".*", "bin", "python" + version)))
    found.append(shutil.which("python" + version))
    for py in filter(None, found):
        r = subprocess.run([py, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                           text=True)  # not printed_by: a shim that does not run is an answer here, not an error
        if r.returncode == 0 and r.stdout.strip() == version:
            return py
    return None


# Python and the package's dependencies: the oldest pyproject.toml admits (older ComfyUI installs and venvs
# still run 3.10; NumPy 1.23's last release), and ComfyUI's portable build's Python (3.13, whose C API and
# messages differ from 3.11's) with the newest
OTHER_PYTHONS = [("3.10", ["numpy==1.23.5", "scipy-openblas32==0.3.27.0.0"]), ("3.13", ["numpy", "scipy-openblas32"])]


def test_the_oldest_dependencies_tested_are_the_floors_pyproject_names():
    """OTHER_PYTHONS' first run stays on what pyproject.toml admits at the least, if its floors move."""
    text = pathlib.Path(REPO, "pyproject.toml").read_text(encoding="utf-8")
    listed = re.search(r"^dependencies = \[(.*)\]$", text, re.M).group(1)
    floors = dict(re.findall(r'"([\w-]+)>=([\d.]+)"', listed))
    pinned = dict(spec.split("==") for spec in OTHER_PYTHONS[0][1])
    assert pinned.keys() == floors.keys()
    for name, floor in floors.items():
        assert (pinned[name] + ".").startswith(floor + "."), (name, pinned[name], floor)
    assert re.search(r'^requires-python = ">=([\d.]+)"$', text, re.M).group(1) == OTHER_PYTHONS[0][0]


@pytest.mark.skipif(sys.platform == "win32", reason="venv layout")
@pytest.mark.parametrize("version, dependencies", OTHER_PYTHONS, ids=[v for v, _ in OTHER_PYTHONS])
def test_the_suite_passes_on_other_pythons(tmp_path, version, dependencies):
    """The package built with each of OTHER_PYTHONS (CPU-only, against those dependencies) passes the test
    suite, but for these native checks, in a venv without PyTorch (no build of it for those Pythons is at
    hand: the tests that need it skip), and the CUDA module's CPython part compiles against its headers.
    Skipped where that Python is not installed; .ci/run cannot bring one."""
    py = python_of_version(version)
    if py is None:
        pytest.skip(f"no Python {version} on this machine (pyenv's or on PATH)")
    venv = tmp_path / "venv"
    subprocess.run([py, "-m", "venv", str(venv)], check=True)
    vpy = str(venv / "bin" / "python")
    r = subprocess.run([vpy, "-m", "pip", "install", "-q", *dependencies, "pytest", "hypothesis",
                        "imageio-ffmpeg", "setuptools>=77"], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        message = f"could not install the test requirements for Python {version}: " + r.stderr[-500:]
        pytest.fail(message) if REQUIRED else pytest.skip(message)
    src = scratch_copy(tmp_path, folders=("tests", "tools", "workflows"))
    for name in ("__init__.py", "install.py"):
        shutil.copy(os.path.join(REPO, name), src / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANVIDEO_", "PYTHON"))}
    env["WANVIDEO_SHARED"] = os.path.dirname(FIXTURES)
    r = subprocess.run([vpy, "-m", "pip", "install", "-q", "--no-build-isolation", "."], cwd=src, capture_output=True,
                       text=True, env=dict(env, WANVIDEO_CUDA="0"), timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    # the CUDA module's CPython part too (built CPU-only above: nvcc would take minutes), against its headers
    need("gcc")
    include = printed_by(vpy, "import sysconfig; print(sysconfig.get_paths()['include'])")
    assert_compiles_cleanly("gcc", "cuda/module_cuda.c", "-I" + include, "-Icsrc", "-Icuda")
    # pytest's own script, not -m: the unbuilt sources at the copy's root must not shadow the installed package
    r = subprocess.run([str(venv / "bin" / "pytest"), "-q", "-p", "no:cacheprovider", "tests",
                        "--ignore=tests/test_native_checks.py"], cwd=src, capture_output=True, text=True, env=env,
                       timeout=1800)
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) > 400, summary  # not a run that skipped nearly everything
