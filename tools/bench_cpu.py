"""CPU benchmark: our decode beside the independent PyTorch reference (tests/reference_decoder.py),
in one process, on a seeded random full-size Wan 2.1 decoder. Prints numbers; asserts nothing.

    python tools/bench_cpu.py compare [--T 3 --h 16 --w 16]
    python tools/bench_cpu.py rss-vs-T [--h 16 --w 16 --Ts 3 9]

Peak memory of a call = highest resident set size sampled during the call minus the resident set
size just before it (Linux /proc; other systems print n/a). rss-vs-T runs each decode in a fresh
subprocess and reports its ru_maxrss."""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import wanvideo_vae as wv  # noqa: E402
from helpers import random_latents, random_weights  # noqa: E402
from wanvideo_vae.cli import PeakRSS, peak_rss_bytes  # noqa: E402


def fmt_mb(b):
    return "n/a" if b is None else f"{b / 2**20:8.1f} MiB"


def compare(args):
    import torch
    from reference_decoder import reference_decode

    weights = random_weights(96, 16, seed=42)
    lat = random_latents(16, args.T, args.h, args.w, seed=1)
    dec = wv.Decoder(weights)
    rows = []
    for label, kw in (("ours, whole frame", dict(enable_vae_tiling=False)),
                      ("ours, tiles 272 (core 256)", dict(tile_x=272, tile_y=272))):
        with PeakRSS() as m:
            t0 = time.perf_counter()
            ours = dec.decode(lat, raw=True, **kw)
            dt = time.perf_counter() - t0
        rows.append((label, dt, m.grown, dec.last_stats["planned_bytes"]))
    with PeakRSS() as m:
        t0 = time.perf_counter()
        ref = reference_decode(weights, lat, np.array(wv.WAN21_MEAN), np.array(wv.WAN21_STD))
        dt = time.perf_counter() - t0
    rows.append((f"torch {torch.__version__} reference (whole sequence)", dt, m.grown, None))
    print(f"latents [16, {args.T}, {args.h}, {args.w}] -> {list(ours.shape)}, full-size decoder, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    # the kernels each side runs: OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU makes ours 1.6x slower
    cpu = wv.backends()["cpu"]
    print(f"ours: {cpu['threads']} threads, {cpu['blas']}; torch: {torch.backends.cpu.get_cpu_capability()}")
    print(f"{'method':44s} {'time':>9s} {'peak RSS':>13s} {'planned arena':>14s}")
    for label, dt, mem, planned in rows:
        print(f"{label:44s} {dt:8.2f}s {fmt_mb(mem):>13s} {fmt_mb(planned) if planned else '':>14s}")
    print(f"max |ours - torch| = {np.abs(ours - ref).max():.3g}; ours / torch time = {rows[0][1] / rows[-1][1]:.2f}")


def one_decode(args):
    weights = random_weights(96, 16, seed=42)
    dec = wv.Decoder(weights)
    lat = random_latents(16, args.T, args.h, args.w, seed=1)
    out = dec.decode(lat, raw=True, enable_vae_tiling=False)
    peak = peak_rss_bytes()  # macOS counts ru_maxrss in bytes, Linux in KiB; Windows has its own
    print(json.dumps({"T": args.T, "peak_rss": peak, "output_bytes": out.nbytes,
                      "planned_bytes": dec.last_stats["planned_bytes"]}))


def rss_vs_t(args):
    results = []
    for T in args.Ts:
        cmd = [sys.executable, __file__, "one", "--T", str(T), "--h", str(args.h), "--w", str(args.w)]
        results.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    print(f"{'T':>3s} {'peak RSS':>13s} {'output':>13s} {'planned arena':>14s}")
    for r in results:
        print(f"{r['T']:3d} {fmt_mb(r['peak_rss']):>13s} {fmt_mb(r['output_bytes']):>13s} {fmt_mb(r['planned_bytes']):>14s}")
    a, b = results[0], results[-1]
    growth = b["peak_rss"] - a["peak_rss"]
    print(f"peak RSS growth T={a['T']} -> T={b['T']}: {fmt_mb(growth)}; output array at T={b['T']}: "
          f"{fmt_mb(b['output_bytes'])} (+10% = {fmt_mb(int(b['output_bytes'] * 1.1))})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["compare", "rss-vs-T", "one"])
    ap.add_argument("--T", type=int, default=3)
    ap.add_argument("--h", type=int, default=16)
    ap.add_argument("--w", type=int, default=16)
    ap.add_argument("--Ts", type=int, nargs="+", default=[3, 9])
    args = ap.parse_args()
    {"compare": compare, "rss-vs-T": rss_vs_t, "one": one_decode}[args.what](args)


if __name__ == "__main__":
    main()
