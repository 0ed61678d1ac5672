"""python -m wanvideo_vae [decode | bench | patch-workflow | info] ...

decode (the default): latents + a VAE checkpoint -> a video, PNG frames or .npy. Without --vae and
  --latents it decodes seeded random latents with a seeded RANDOM full-size Wan 2.1 decoder, so it
  runs on a fresh machine (the frames show noise: it demonstrates speed and memory).
bench: our decode beside PyTorch (untiled, and blended-tiled the way ComfyUI-WanVideoWrapper
  tiles) on the same latents and weights, in one process: time, peak memory, max difference.
patch-workflow: rewrite a ComfyUI workflow's WanVideoDecode nodes, and ComfyUI's own VAE decodes of a
  Wan 2.1 VAE, to the native exact decoder and put the VAE patch node after its WanVideo VAE loaders
  (the samplers' own decodes).
info: versions, the backends (and why one is not usable), each GPU and whether this build runs there,
  and how a decode would be planned in the memory free now: what a bug report needs.
"""
import argparse
import contextlib
import json
import os
import re
import signal
import sys
import threading
import time

import numpy as np

from . import Decoder, WanVAEError, _C, backends, info, load_weights
from .api import BACKENDS, NORMALIZATIONS, TILE, TILE_STRIDE_X, TILE_STRIDE_Y, normalize_frames
from .arrays import PRECISIONS
from .console import tolerant_console
from .devices import precision_for
from .media import (check_file_target, check_output, contact_sheet, have_mp4, load_latents, output_kind,
                    write_frames)
from .random_model import random_latents, random_weights
from .sysmem import PeakSampler
from .workflow import patch_workflow_file

DEFAULT_RANDOM_SHAPE = (4, 16, 24)  # latent T, h, w of the no-argument run: 13 frames of 128 x 192
GPU_RANDOM_SHAPE = (21, 60, 104)  # on a GPU: 81 frames of 480 x 832


class CliError(Exception):
    """A bad argument: printed as one line, exit status 2."""


# ---- memory and progress -----------------------------------------------------------------------

def _windows_working_set():
    """(working set, peak working set) of this process in bytes (Windows), or None."""
    import ctypes

    class MemoryCounters(ctypes.Structure):  # PROCESS_MEMORY_COUNTERS
        _fields_ = [("cb", ctypes.c_ulong), ("PageFaultCount", ctypes.c_ulong)] + [
            (name, ctypes.c_size_t) for name in (
                "PeakWorkingSetSize", "WorkingSetSize", "QuotaPeakPagedPoolUsage", "QuotaPagedPoolUsage",
                "QuotaPeakNonPagedPoolUsage", "QuotaNonPagedPoolUsage", "PagefileUsage", "PeakPagefileUsage")]

    counters = MemoryCounters()
    counters.cb = ctypes.sizeof(counters)
    this_process = ctypes.c_void_p(-1)  # GetCurrentProcess()'s pseudo handle
    if not ctypes.windll.kernel32.K32GetProcessMemoryInfo(this_process, ctypes.byref(counters),
                                                          ctypes.c_ulong(counters.cb)):
        return None
    return int(counters.WorkingSetSize), int(counters.PeakWorkingSetSize)


def peak_rss_bytes():
    if sys.platform == "win32":
        counters = _windows_working_set()
        return counters and counters[1]
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def current_rss_bytes():
    if sys.platform == "win32":
        counters = _windows_working_set()
        return counters and counters[0]
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


class PeakRSS(PeakSampler):
    """Highest resident set size above the starting one while the block runs (sampled every 2 ms)."""

    def read(self):
        return current_rss_bytes()


def mib(n):
    return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


def progress_bar(enabled):
    """progress(done, total) drawing a tqdm bar when tqdm is installed, a plain line otherwise."""
    if not enabled:
        return None, lambda: None
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    state = {}

    def progress(done, total):
        if tqdm is not None:
            if "bar" not in state:
                state["bar"] = tqdm(total=total, unit="step", desc="decode", leave=False)
            state["bar"].update(done - state["bar"].n)
        else:
            state["line"] = True
            print(f"\rdecode: {done}/{total} steps", end="", file=sys.stderr, flush=True)
        return True

    def close():
        if "bar" in state:
            state["bar"].close()
        elif "line" in state:  # ends the line the steps were drawn on
            print(file=sys.stderr)

    return progress, close


# ---- decode ------------------------------------------------------------------------------------

def _check_backend(device, precision):
    """(backend, precision): the CUDA backend when asked or (auto) usable, in bf16 unless told (fp32 on
    a GPU without bf16 arithmetic); the CPU computes in fp32 only."""
    cuda = backends()["cuda"] if device != "cpu" else None  # (loading the CUDA libraries takes 200+ MiB)
    backend = "cuda" if device == "cuda" or (device == "auto" and cuda["usable"]) else "cpu"
    if backend == "cuda" and not cuda["usable"]:
        raise CliError(f"--device cuda: the CUDA backend is not usable here ({cuda.get('reason') or 'not built'})")
    if precision == "auto":
        precision = precision_for("bf16", -1) if backend == "cuda" else "fp32"
    if backend == "cpu" and precision != "fp32":
        raise CliError(f"--precision {precision}: the CPU backend computes in float32")
    return backend, precision


def _inputs(args, backend):
    if (args.vae is None) != (args.latents is None):
        raise CliError("give both --vae and --latents, or neither (then random weights and latents are used)")
    if args.vae is None:
        T, h, w = args.random_shape or (GPU_RANDOM_SHAPE if backend == "cuda" else DEFAULT_RANDOM_SHAPE)
        seed = args.seed or 0
        print("wanvideo_vae: RANDOM full-size Wan 2.1 decoder weights and latents (seeded): the frames show "
              "noise; this run shows speed and memory")
        return random_weights(96, 16, seed=seed), random_latents(16, T, h, w, seed=seed), "random"
    if args.random_shape or args.seed is not None:
        raise CliError("--random-shape and --seed are for the run without --vae and --latents")
    return load_weights(args.vae), load_latents(args.latents), os.path.basename(args.vae)


def _default_out(args):
    """--out, else a video in this folder named after the latents (the random run's: wanvideo_vae_random)."""
    if args.out:
        return args.out
    stem = os.path.splitext(os.path.basename(args.latents))[0] if args.latents else "wanvideo_vae_random"
    return stem + (".mp4" if have_mp4() else ".avi")


def _same_file(a, b):
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)  # hard links and other names of one file too
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def _check_outputs_apart(args, out_path):
    """The output replaces neither input, and the contact sheet is not put among the PNG frames."""
    for flag in ("latents", "vae"):
        given = getattr(args, flag)
        if given and _same_file(given, out_path):
            raise CliError(f"{out_path}: is the --{flag} file; write the output to another name")
    sheet = args.contact_sheet
    png_folder = not os.path.splitext(out_path)[1]
    if sheet and (_same_file(sheet, out_path)
                  or (png_folder and _same_file(os.path.dirname(os.path.abspath(sheet)), out_path))):
        raise CliError(f"--contact-sheet {sheet}: is inside the PNG frames' folder {out_path}; put it beside it")


def _check_output_size(dec, latents, out_path, options):
    """Before the decode: there are frames to write, and they fit the output's format (an .avi holds
    4 GiB)."""
    shape = tuple(np.shape(latents))
    if options["end_frame"] and len(shape) in (4, 5) and shape[-3] < 2:
        raise CliError("--end-frame needs at least 2 latent frames: the last is the end image, whose frame is "
                       "dropped, and the video is the others")
    if len(shape) in (4, 5):
        keep = ("tile_x", "tile_y", "tile_stride_x", "tile_stride_y", "enable_vae_tiling", "end_frame", "dtype")
        p = dec.plan(*shape[-3:], max_memory=1 << 62, **{k: options[k] for k in keep})
        written = p["frames"] - (1 if options["end_frame"] else 0)  # the end image's frame is dropped
        check_output(out_path, (written, p["height"], p["width"]))


def decode_cmd(args):
    backend, precision = _check_backend(args.device, args.precision)
    out_path = _default_out(args)
    check_output(out_path)
    _check_outputs_apart(args, out_path)
    if args.contact_sheet:
        if not args.contact_sheet.lower().endswith(".png"):
            raise CliError(f"--contact-sheet {args.contact_sheet}: the contact sheet is a .png")
        check_file_target(args.contact_sheet)
    weights, latents, source = _inputs(args, backend)
    if args.latents and args.latents.lower().endswith(".latent") and not args.unnormalized:
        print("wanvideo_vae: a ComfyUI .latent: if ComfyUI's own Wan nodes made it, its latents are "
              "un-normalized: add --unnormalized")
    dec = Decoder(weights, backend=backend, precision=precision)
    # a picture to write decodes straight to uint8: a quarter of the host memory float32 frames take
    as_bytes = args.normalization == "default" and output_kind(out_path) != ".npy"
    # strides of 1: any --tile the planner takes passes the (WanVideoDecode) tile > stride check
    options = dict(raw=not as_bytes, dtype=np.uint8 if as_bytes else None, end_frame=args.end_frame,
                   enable_vae_tiling=args.tile > 0, tile_x=args.tile or TILE, tile_y=args.tile or TILE,
                   tile_stride_x=1, tile_stride_y=1, max_memory=args.max_memory)
    if args.unnormalized:
        options.update(mean=[0.0] * dec.z_dim, std=[1.0] * dec.z_dim)
    _check_output_size(dec, latents, out_path, options)
    if args.warmup:  # the first decode of a shape loads the GPU's kernels and picks its algorithms
        dec.decode(latents, **options)
    progress, close = progress_bar(not args.quiet)
    t0 = time.perf_counter()
    try:
        frames = dec.decode(latents, progress=progress, profile=args.profile, **options)
    finally:
        close()
    seconds = time.perf_counter() - t0
    if not as_bytes:
        frames = normalize_frames(frames, args.normalization, inplace=True)
    if args.end_frame:  # as WanVideoDecode does: the end image's own frame is not part of the video
        frames = frames[:-1]
    write_frames(frames, out_path, args.fps)
    if args.contact_sheet:
        contact_sheet(frames, args.contact_sheet)
    s = dec.last_stats
    rows = [
        ("weights", f"{source} (dim {dec.dim}, z_dim {dec.z_dim}), backend {s['backend']} {s['precision']}"),
        ("latents", "x".join(str(n) for n in np.shape(latents))),
        ("frames", f"{frames.shape[0]} of {frames.shape[2]} x {frames.shape[1]} px -> {out_path}"),
        ("tiles", f"{s['tiles_x']} x {s['tiles_y']}, core {s['core_x']} x {s['core_y']} px, halo {s['out_halo']} px"
                  + (" (shrunk to fit the memory budget)" if s["shrunk_to_fit"] else "")),
        ("time", f"{seconds:.2f} s (trunk {s['seconds_trunk']:.2f} s, tiles {s['seconds_tiles']:.2f} s), "
                 f"{s['conv_flops'] / max(seconds, 1e-9) / 1e9:.1f} GFLOP/s of convolutions"),
        ("memory", f"arena {mib(s['planned_bytes'])} planned, {mib(s['arena_high_water'])} used; weights "
                   f"{mib(s['weight_bytes'])} ({'device' if backend == 'cuda' else 'host'}); "
                   f"process peak RSS {mib(peak_rss_bytes())}"),
    ]
    if args.profile:
        ops = sorted(s["op_seconds"].items(), key=lambda kv: -kv[1][0])
        rows.append(("profile", ", ".join(f"{k} {sec:.2f} s ({calls})" for k, (sec, calls, _) in ops)))
        rows.append(("host part", ", ".join(f"{k} {host:.2f} s" for k, (_, _, host) in ops)
                     + " (queueing the ops: what the host costs when it, not the device, sets the pace)"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if args.profile:
        _print_conv_profile(s["conv_seconds"])
    return 0


def _print_conv_profile(convs, top=12):
    """The convolutions that took the most time, with the rate each ran at."""
    total = sum(sec for sec, _, _ in convs.values()) or 1e-9
    print(f"{'convolution':44s} {'seconds':>8s} {'share':>6s} {'calls':>6s} {'GFLOP/s':>9s}")
    for name, (sec, calls, flops) in sorted(convs.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"{name:44s} {sec:8.3f} {sec / total:6.1%} {calls:6d} {flops / max(sec, 1e-9) / 1e9:9.1f}")


# ---- bench -------------------------------------------------------------------------------------

def _timed(fn, device, ours=False):
    """(result, seconds, peak memory the call added, device memory ours left behind): torch's counter
    for PyTorch on a GPU, sampled device memory for ours (torch does not see our allocations), sampled
    RSS on the CPU; what was left behind, ours on a GPU only (else None). On a GPU
    the call runs once untimed first: its first run of a shape loads kernels and picks algorithms
    (PyTorch's and ours alike), which a long-running app pays once."""
    if device != "cuda":
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            out = fn()
            seconds = time.perf_counter() - t0
        return out, seconds, rss.grown, None
    import torch

    from .devices import PeakDeviceMemory

    fn()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()  # what the previous run cached must not count against (or for) this one
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    # the sampling thread runs for ours alone: beside PyTorch's Python loop it would slow it down
    with PeakDeviceMemory() if ours else contextlib.nullcontext() as dev:
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    if ours:
        return out, seconds, dev.grown, dev.held
    return out, seconds, torch.cuda.max_memory_allocated() - base, None


def bench_cmd(args):
    try:
        import torch
    except ImportError:
        raise CliError("bench needs PyTorch for its baselines: pip install torch") from None
    from .torch_reference import TorchWanDecoder

    if args.plot:  # before the benchmark's minutes, not after
        _pyplot()
        check_file_target(args.plot)
    T, h, w = (21, 90, 160) if args.preset == "720p81" else args.shape
    backend, precision = _check_backend(args.device, args.precision)
    weights = random_weights(args.dim, 16, seed=args.seed)
    latents = random_latents(16, T, h, w, seed=args.seed)
    tdev = "cuda" if backend == "cuda" else "cpu"
    tdtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    ref = TorchWanDecoder(weights, device=tdev, dtype=tdtype)
    dec = Decoder(weights, backend=backend, precision=precision)
    z = torch.from_numpy(latents)
    if tdev == "cuda":  # both sides read the latents from the GPU (each timed run follows an untimed one)
        latents = z.to("cuda", tdtype)
    to_np = lambda x: x.float().permute(1, 2, 3, 0).cpu().numpy()  # noqa: E731
    runs = {}  # label -> its figures, as the JSON gives them

    def done(label, timed, diff, tiles="", flops=0, **more):  # each run as it ends too, should a later one not finish
        sec, mem, held = timed
        # conv_flops: ours, the plan's convolution work (0 for PyTorch's runs); held_bytes: ours on a GPU, the
        # device memory the call left behind; planned_bytes: ours, the arena the plan allocated
        runs[label] = {"seconds": sec, "peak_bytes": mem, "max_abs_diff_vs_pytorch_untiled": diff, "tiles": tiles,
                       "conv_flops": flops, **({"held_bytes": held} if held is not None else {}), **more}
        print(f"bench: {label}: {sec:.2f} s, {mib(mem)}, max |diff| {diff:.3g}", file=sys.stderr, flush=True)

    out, *timed = _timed(lambda: to_np(ref.decode(z).clamp(-1, 1)), tdev)
    untiled = out
    done("pytorch untiled", timed, 0.0)
    if not args.skip_blended:
        out, *timed = _timed(lambda: to_np(ref.decode_blended(z, TILE, TILE, TILE_STRIDE_X, TILE_STRIDE_Y)), tdev)
        done(f"pytorch blended {TILE}/{TILE_STRIDE_X}/{TILE_STRIDE_Y}", timed, float(np.abs(out - untiled).max()))
        del out
    # our arena within half of PyTorch's peak; RSS growth can read near 0 in a process that already
    # holds the memory (a test run after others), hence the floor
    half = max(int(runs["pytorch untiled"]["peak_bytes"] or 0) // 2, 64 << 20)
    ours = [("ours untiled", dict(enable_vae_tiling=False)),
            (f"ours exact tiles {TILE}", dict(tile_x=TILE, tile_y=TILE)),
            ("ours in half PyTorch's memory", dict(enable_vae_tiling=False, max_memory=half))]
    if tdev == "cuda":  # the GPU target: weights and working memory within 2 GiB of device memory
        ours.append(("ours in 2 GiB with weights",
                     dict(enable_vae_tiling=False, max_memory=(2 << 30) - dec._model.weight_bytes)))
    # the last plan again, its frames made bytes (a quarter of the host memory, and on a GPU of the copies
    # to the host); the difference includes their rounding, up to 1/255 on PyTorch's [-1, 1] scale
    ours.append((ours[-1][0] + ", uint8 frames", dict(ours[-1][1], dtype=np.uint8)))
    for label, kw in ours:
        raw = "dtype" not in kw
        out, *timed = _timed(lambda: dec.decode(latents, raw=raw, **kw), tdev, ours=True)  # host frames
        if raw:
            np.clip(out, -1, 1, out=out)  # as PyTorch's output was clamped, outside the timing
        else:
            out = out * np.float32(2 / 255) - 1
        s = dec.last_stats
        done(label, timed, float(np.abs(out - untiled).max()), f"{s['tiles_x']}x{s['tiles_y']}", s["conv_flops"],
             planned_bytes=s["planned_bytes"])
        del out
    result = {"latents": [16, T, h, w], "dim": args.dim, "device": tdev, "precision": precision,
              "timed_after_an_untimed_run": tdev == "cuda",
              "torch": torch.__version__, "cpus": os.cpu_count(), "our_weight_bytes": dec._model.weight_bytes,
              "runs": runs}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        mem_kind = "peak GPU mem" if tdev == "cuda" else "peak RSS"
        print(f"latents [16, {T}, {h}, {w}] -> {untiled.shape[0]} x {untiled.shape[1]} x {untiled.shape[2]}, "
              f"dim {args.dim} decoder, {tdev} {precision}, torch {torch.__version__}, {os.cpu_count()} CPUs")
        print(f"{'method':38s} {'tiles':>5s} {'time':>9s} {'conv TFLOP':>10s} {mem_kind:>13s} "
              f"{'max |diff| vs pytorch untiled':>31s}")
        for k, r in runs.items():
            f = r["conv_flops"]
            work = f"{f / 1e12:10.3g}" if f else f"{'':10s}"
            print(f"{k:38s} {r['tiles']:>5s} {r['seconds']:8.2f}s {work} {mib(r['peak_bytes']):>13s} "
                  f"{r['max_abs_diff_vs_pytorch_untiled']:31.3g}")
    if args.plot:
        _plot(runs, args.plot, f"[16, {T}, {h}, {w}] dim {args.dim} on {tdev}")
    return 0


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CliError("--plot needs matplotlib: pip install 'wanvideo-vae[plot]'") from None
    return plt


def _plot(runs, path, title):
    plt = _pyplot()
    labels = list(runs)  # runs: label -> its figures (bench_cmd)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    a.barh(labels, [runs[k]["seconds"] for k in labels], color="#4a7bb7")
    a.set_xlabel("seconds")
    b.barh(labels, [(runs[k]["peak_bytes"] or 0) / 2**20 for k in labels], color="#b7794a")
    b.set_xlabel("peak memory (MiB)")
    b.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


# ---- patch-workflow ----------------------------------------------------------------------------

def patch_workflow_cmd(args):
    try:
        report = patch_workflow_file(args.src, args.dst, vae_patch=not args.decode_only, core=not args.no_core)
    except OSError as e:
        raise CliError(f"{e.filename or args.src}: {e.strerror}") from None
    except ValueError as e:
        raise CliError(str(e)) from None
    said = []
    if report.decode_nodes or not report.core_decode_nodes:
        said.append(f"{report.decode_nodes} WanVideoDecode node(s) now use WanVideoNativeDecode")
    if report.vae_patches:
        said.append(f"{report.vae_patches} VAE loader output(s) now go through WanVideoNativeVAEPatch, so the "
                    "samplers' own decodes (InfiniteTalk / MultiTalk windows, WanAnimate loops) are native too")
    if report.core_decode_nodes:
        said.append(f"{report.core_decode_nodes} VAE Decode node(s) of a Wan 2.1 VAE (ComfyUI's own) now use "
                    "WanCoreVAENativeDecode")
    print(f"{args.dst}: " + "; ".join(said))
    if report.decodes_kept:
        print(f"note: {report.decodes_kept} WanVideoDecode node(s) were left as they are: their VAE is, or may be, "
              "one this decoder does not implement (a Wan 2.2 VAE, or a TAEHV tiny decoder such as FlashVSR's)")
    if report.wan22_loaders:
        print(f"note: {report.wan22_loaders} loader(s) of a Wan 2.2 VAE were left as they are (this decoder is Wan "
              "2.1's)")
    if report.loaders_in_group_nodes:
        print(f"note: {report.loaders_in_group_nodes} VAE loader(s) inside legacy group nodes were not looked at: "
              "where their output does not go through a 'WanVideo VAE: use native exact decode' node, add one by hand")
    return 0


# ---- arguments ---------------------------------------------------------------------------------

_SIZE = re.compile(r"\s*([0-9.e+-]+?)\s*(?:([kmgt])(?:i?b)?|b)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def _positive_bytes(text):
    """Bytes from '4G', '4GB', '4 GiB', '512m', '1.5k', '100': every unit binary, GB too (as GPU memory is quoted)."""
    m = _SIZE.fullmatch(text)
    try:
        n = float(m[1]) * _SIZE_UNITS.get((m[2] or "").lower(), 1)
    except (TypeError, ValueError):  # TypeError: no match
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r} (e.g. 4G, 4GB, 512M)") from None
    if not 1 <= n < 2**63:  # a fraction of a byte would be 0, no budget at all
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1 byte and below 2**63 bytes")
    if not m[2] and n != int(n):
        raise argparse.ArgumentTypeError(f"{text}: bytes come whole (a unit takes a fraction: 1.5G)")
    return int(n)  # a unit's fraction of a byte dropped


def _positive_fps(text):
    try:
        fps = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.01 <= fps <= 1000:  # a frame at most every 100 s: an AVI's frame period is 32-bit microseconds
        raise argparse.ArgumentTypeError(f"{text}: frames per second must be from 0.01 to 1000")
    return fps


INT_MAX = 2**31 - 1  # a C int: the decoder's widths


def _count(least, most=None):
    """An argparse type: a whole number, at least `least` and, given, at most `most`."""
    def parse(text):
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if n < least:
            raise argparse.ArgumentTypeError(f"{text}: must be at least {least}")
        if most is not None and n > most:
            raise argparse.ArgumentTypeError(f"{text}: must be at most {most}")
        return n
    return parse


def _tile_size(text):
    try:
        tile = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if tile < 0 or tile == 1:
        raise argparse.ArgumentTypeError(f"{text}: 0 (the whole frame) or a tile size in output pixels")
    return tile


# ---- info --------------------------------------------------------------------------------------

def info_cmd(args):
    report = info.collect(tuple(args.shape), plans=not args.no_plan)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print("\n".join(info.format_report(report)))
    return 0


# --precision auto, as devices.precision_for picks
AUTO_PRECISION_HELP = "auto: bf16 on a GPU with bf16 arithmetic (compute capability 8.0 on), else fp32"


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m wanvideo_vae", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command")
    d = sub.add_parser("decode", help="decode latents to a video, PNG frames or .npy (the default command)")
    d.add_argument("--vae", help="VAE checkpoint (.safetensors, .pth, .pt, .ckpt or .bin), or a model folder (a "
                   "diffusers VAE's, a pipeline's vae/, a Wan repository's Wan2.1_VAE.pth); omit with --latents for "
                   "random weights")
    d.add_argument("--latents", help="latents [16, T, h, w] or [1, 16, T, h, w]: .npy, .safetensors, .pt/.pth, "
                                     "or ComfyUI's .latent (Save Latent)")
    d.add_argument("--unnormalized", action="store_true",
                   help="the latents are already un-normalized, as ComfyUI's own Wan nodes keep them (their Save "
                        "Latent files): decode without the Wan 2.1 mean/std (WanVideoWrapper's are normalized)")
    d.add_argument("--out", help="output: .mp4 (needs the video extra), .avi, .npy, or a folder for PNG frames")
    d.add_argument("--fps", type=_positive_fps, default=16.0, help="frames per second of a video output (default 16)")
    d.add_argument("--tile", type=_tile_size, default=0,
                   help="tile size in output pixels, halo included; 0 (default): the whole frame, in tiles only "
                        "where the memory budget requires them (the fastest decode that fits)")
    d.add_argument("--max-memory", type=_positive_bytes, help="budget for the decode's working memory, e.g. 4G")
    d.add_argument("--device", choices=["auto", *BACKENDS], default="auto")
    d.add_argument("--precision", choices=["auto", *PRECISIONS], default="auto",
                   help=AUTO_PRECISION_HELP + " (the CPU computes in fp32 only)")
    d.add_argument("--end-frame", action="store_true",
                   help="end-image mode: the last latent frame decodes alone, and its frame is dropped (as "
                        "WanVideoDecode does)")
    d.add_argument("--normalization", choices=NORMALIZATIONS, default="default",
                   help="default: clamp(-1, 1) then (x+1)/2; minmax: by the global min/max; none: raw")
    d.add_argument("--contact-sheet", metavar="PNG", help="also write a grid of frames")
    d.add_argument("--random-shape", type=_count(1, _C.MAX_LATENT_EXTENT), nargs=3, metavar=("T", "H", "W"),
                   help=f"latent shape of the random run (default {DEFAULT_RANDOM_SHAPE} on the CPU, "
                        f"{GPU_RANDOM_SHAPE} on a GPU)")
    d.add_argument("--seed", type=_count(0), help="seed of the random weights and latents (default 0)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.add_argument("--profile", action="store_true",
                   help="time every backend op (waits for each: slower) and print where the time went")
    d.add_argument("--warmup", action="store_true",
                   help="decode once untimed first: the time and profile then leave out the first call's setup "
                        "(kernel loading, algorithm choice), as in a long-running app")
    d.set_defaults(func=decode_cmd)
    b = sub.add_parser("bench", help="time and memory of ours beside PyTorch untiled and blended-tiled")
    b.add_argument("--shape", type=_count(1, _C.MAX_LATENT_EXTENT), nargs=3, metavar=("T", "H", "W"),
                   default=(2, 40, 40),
                   help="latent T, h, w (default %(default)s: a few minutes on 2 CPU cores)")
    b.add_argument("--preset", choices=["720p81"], help="720p x 81 frames: latents [16, 21, 90, 160] (for GPUs)")
    b.add_argument("--dim", type=_count(1, INT_MAX), default=96, help="decoder width (96: full-size Wan 2.1)")
    b.add_argument("--device", choices=["auto", *BACKENDS], default="auto")
    b.add_argument("--precision", choices=["auto", *PRECISIONS], default="auto",
                   help=AUTO_PRECISION_HELP)
    b.add_argument("--seed", type=_count(0), default=0, help="seed of the random weights and latents")
    b.add_argument("--skip-blended", action="store_true", help="leave out PyTorch's blended tiling (3x the work)")
    b.add_argument("--json", action="store_true", help="print the results as JSON")
    b.add_argument("--plot", metavar="PNG", help="bar charts of time and peak memory (needs matplotlib)")
    b.set_defaults(func=bench_cmd)
    p = sub.add_parser("patch-workflow", help="rewrite a workflow's WanVideoDecode nodes, and ComfyUI's own VAE "
                                              "decodes of a Wan 2.1 VAE, to the native decoder and patch its VAE "
                                              "loaders' outputs")
    p.add_argument("src", help="workflow JSON (UI or API format)")
    p.add_argument("dst", help="where to write the patched workflow")
    p.add_argument("--decode-only", action="store_true",
                   help="rewrite the decode nodes only; leave the VAE loaders' outputs unpatched")
    p.add_argument("--no-core", action="store_true",
                   help="leave ComfyUI's own VAE Decode and VAE Decode (Tiled) nodes as they are")
    p.set_defaults(func=patch_workflow_cmd)
    i = sub.add_parser("info", help="versions, backends, GPUs, and how a decode would be planned here (for a bug "
                                    "report)")
    i.add_argument("--shape", type=_count(1, _C.MAX_LATENT_EXTENT), nargs=3, metavar=("T", "H", "W"),
                   default=(21, 90, 160),
                   help="latent T, h, w of the decode to plan (default %(default)s: 81 frames of 1280x720)")
    i.add_argument("--no-plan", action="store_true",
                   help="leave out the plans (which load full-size weights of zeros on each GPU for a moment)")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    i.set_defaults(func=info_cmd)
    return ap


COMMANDS = ("decode", "bench", "patch-workflow", "info")
STOPPING_SIGNALS = ("SIGTERM", "SIGHUP", "SIGBREAK")  # kill, a closed terminal, Ctrl+Break (Windows)


class Stopped(KeyboardInterrupt):
    """A stopping signal, raised where Ctrl+C's KeyboardInterrupt would be: the decode stops at its next
    step and a file half written is removed, as for Ctrl+C."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


def _raise_stopped(signum, frame):
    raise Stopped(signum)


@contextlib.contextmanager
def _stopping_signals_interrupt():
    """Stopping signals raise Stopped for the block (a signal's default would end the process at once,
    leaving a temporary .part file). Only the main thread can set handlers: elsewhere, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kept = {}
    try:
        for name in STOPPING_SIGNALS:
            signum = getattr(signal, name, None)
            if signum is not None and signal.getsignal(signum) == signal.SIG_DFL:  # a caller's own handler stays
                kept[signum] = signal.signal(signum, _raise_stopped)
        yield
    finally:
        for signum, handler in kept.items():
            signal.signal(signum, handler)


def _in_cli_words(message):
    """The API's parameters in an error as the command line names them: --tile sets tile_x and tile_y alike."""
    message = message.replace("Pass max_memory=", "Pass --max-memory ")
    return re.sub(r"\btile_[xy]=(\d+) is smaller", r"--tile \1 is smaller", message)


def main(argv=None):
    tolerant_console()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:  # decode takes no positional
        parser.error(f"invalid command: {argv[0]!r} (choose from {', '.join(COMMANDS)}; decode is the default)")
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["decode"] + argv  # decode is the default command
    args = parser.parse_args(argv)
    try:
        with _stopping_signals_interrupt():
            return args.func(args)
    except (CliError, WanVAEError, MemoryError, OSError) as e:  # OSError: writing the output (disk full, ...)
        print(f"error: {_in_cli_words(str(e))}", file=sys.stderr)
        return 2
    except Stopped as e:
        print(f"stopped by {e.name}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
