"""The issue's GPU targets, each against what one run of tools/gpu_check.sh measured: PASS, FAIL,
PARTIAL (a figure the tests wrote, from a tests step that did not end well: not every case ran) or
n/a (its step did not run or finish).

    python3 tools/gpu_verdicts.py BENCH_JSON FIGURES_JSONL TESTS_STATUS DIRECT ENV_TXT

BENCH_JSON: `python -m wanvideo_vae bench --json`'s output; FIGURES_JSONL: the figures
tests/test_cuda.py reported (one JSON object a line); TESTS_STATUS: the tests step's exit status
("skipped" where it did not run); DIRECT: how many conv shapes of the profiled decodes fell to the
direct kernel ("n/a": not profiled); ENV_TXT: nvidia-smi's line (the GPU's name first)."""
import json
import math
import sys

TIME_TARGET = 2.0           # seconds, 720p x 81 in bf16 within 2 GiB, on an H100
MEMORY_TARGET = 2 << 30     # bytes, weights included
SPEEDUP_TARGET = 5.0        # x PyTorch, both untiled
LEVEL_TOL = 1 << 20         # bytes a call may leave behind in device memory
FP32_TOL = 1e-3
HALF_TOL, HALF_SLACK, HALF_MIN_PSNR = 0.02, 1.5, 40.0  # tests/test_cuda.py's
HALF_BASELINE_MAX, HALF_BASELINE_MIN_PSNR = 0.1, 35.0    # PyTorch's own, past which it is no baseline
BENCH_DIFF_MAX = 0.25       # the timed decode's frames against PyTorch's, bf16 both on [-1, 1]
                            # (0.06 in the H100 and H200 runs of 2026-11-28)


def load(path, lines=False):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        return [json.loads(line) for line in text.splitlines()] if lines else json.loads(text)
    except (OSError, ValueError):
        return [] if lines else {}


def gpu_name(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().split(",")[0].strip() or "unknown GPU"
    except OSError:
        return "unknown GPU"


def worst(values):
    """The largest figure, a NaN above all (max() skips a NaN unless it comes first)."""
    return max(values, key=lambda v: (math.isnan(v), v))


def _line(name, word, detail=""):
    return f"target {name:46s} {word:4s}  {detail}".rstrip()


def verdict(name, ok, detail=""):
    return _line(name, "n/a" if ok is None else "PASS" if ok else "FAIL", detail)


def bench_verdicts(bench, gpu):
    runs = bench.get("runs", {})
    out = []
    two = runs.get("ours in 2 GiB with weights")
    if two:
        total = two["peak_bytes"] + bench["our_weight_bytes"]
        diff = two["max_abs_diff_vs_pytorch_untiled"]
        right = math.isfinite(diff) and diff <= BENCH_DIFF_MAX  # a fast decode counts only if its frames are right
        # the sampled peak may miss, but cannot be below, the arena the plan allocated for the whole call
        sampled = two.get("planned_bytes") is None or two["peak_bytes"] >= two["planned_bytes"]
        out.append(verdict("720p x 81 bf16 within 2 GiB: <= 2.0 s", two["seconds"] <= TIME_TARGET and right,
                           f"{two['seconds']:.2f} s, {two['tiles']} tiles, max |diff| vs PyTorch {diff:.3g}, "
                           f"on {gpu} (target: H100)"))
        out.append(verdict("... and <= 2 GiB with the weights", total <= MEMORY_TARGET and sampled,
                           f"{total / 2**30:.3f} GiB (weights + what the call added; arena planned "
                           f"{(two.get('planned_bytes') or 0) / 2**30:.3f} GiB)"))
    else:
        out.append(verdict("720p x 81 bf16 within 2 GiB", None))
    untiled = runs.get("ours untiled", {})
    torch_s, ours_s = runs.get("pytorch untiled", {}).get("seconds"), untiled.get("seconds")
    if torch_s and ours_s:
        diff = untiled.get("max_abs_diff_vs_pytorch_untiled", math.nan)
        right = math.isfinite(diff) and diff <= BENCH_DIFF_MAX
        # out of reach as measured: PyTorch's 4.34 s / 5 is under the H100's bf16 floor for the 603 TFLOP (README)
        out.append(verdict(">= 5x PyTorch (both untiled; not reachable)", torch_s / ours_s >= SPEEDUP_TARGET and right,
                           f"{torch_s / ours_s:.2f}x ({torch_s:.2f} s / {ours_s:.2f} s), max |diff| {diff:.3g}"))
    else:
        out.append(verdict(">= 5x PyTorch (both untiled)", None))
    return out


def _sane_baseline(r):
    return r["torch_max"] <= HALF_BASELINE_MAX and r["torch_psnr"] >= HALF_BASELINE_MIN_PSNR


def _half_within(r):
    return (_sane_baseline(r) and r["max"] <= max(HALF_TOL, HALF_SLACK * r["torch_max"])
            and r["p999"] <= max(HALF_TOL, HALF_SLACK * r["torch_p999"]))


def _half_psnr(r):
    return _sane_baseline(r) and r["psnr"] >= min(HALF_MIN_PSNR, r["torch_psnr"] - 20 * math.log10(HALF_SLACK))


def figures_verdicts(figures, bench, tests_status):
    """The tests' figures' targets: PARTIAL, not PASS, where the tests step did not end well."""
    partial = tests_status not in ("0", "skipped")

    def judged(name, ok, detail=""):
        if ok and partial:
            return _line(name, "PARTIAL", f"{detail} (the tests step exit {tests_status}: not every case ran)")
        return verdict(name, ok, detail)

    out = []
    held = [abs(r["bytes"]) for r in figures if "bytes" in r]  # a level below the one before is as wrong as above
    out.append(judged("device memory back to its level (1 MiB)", max(held) <= LEVEL_TOL if held else None,
                      f"at most {max(held):.0f} bytes off, {len(held)} calls" if held else ""))
    bench_held = [abs(v["held_bytes"]) for v in bench.get("runs", {}).values() if v.get("held_bytes") is not None]
    out.append(verdict("... and after each full-size bench call", max(bench_held) <= LEVEL_TOL if bench_held else None,
                       f"at most {max(bench_held):.0f} bytes off, {len(bench_held)} calls" if bench_held else ""))
    fp32 = [r["max"] for r in figures if "fp32" in r["test"] and "psnr" not in r]
    out.append(judged("fp32 within 1e-3 of the CPU and the fixtures", all(v <= FP32_TOL for v in fp32) if fp32 else None,
                      f"max {worst(fp32):.3g}, {len(fp32)} cases" if fp32 else ""))
    half = [r for r in figures if "torch_psnr" in r]  # beside PyTorch's own in the same precision
    if half:
        within = sum(r["max"] <= HALF_TOL for r in half)
        out.append(judged("16-bit within 2e-2, or 1.5x PyTorch's error", all(_half_within(r) for r in half),
                          f"max {worst([r['max'] for r in half]):.3g}; within 2e-2 alone: {within} of {len(half)} "
                          f"cases; PyTorch's own sane in {sum(_sane_baseline(r) for r in half)}"))
        out.append(judged("16-bit PSNR >= 40 dB, or PyTorch's less 3.5 dB", all(_half_psnr(r) for r in half),
                          f"lowest {min(r['psnr'] for r in half):.1f} dB; 40 dB alone: "
                          f"{sum(r['psnr'] >= HALF_MIN_PSNR for r in half)} of {len(half)}"))
    else:
        out.append(judged("16-bit accuracy", None))
    return out


def verdicts(bench, figures, tests_status, direct, gpu):
    out = bench_verdicts(bench, gpu) + figures_verdicts(figures, bench, tests_status)
    # not an issue target: a shape cuDNN runs nothing for falls to the slow direct kernel, and the times with it
    out.append(verdict("every conv shape on cuDNN or a kernel of ours", None if direct == "n/a" else direct == "0",
                       "" if direct == "n/a" else f"{direct} on the direct kernel (profile.txt says which and why)"))
    return out


def main(argv):
    bench_path, figures_path, tests_status, direct, env_path = argv
    for line in verdicts(load(bench_path), load(figures_path, lines=True), tests_status, direct, gpu_name(env_path)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
