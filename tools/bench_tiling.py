"""Exact-tiling benchmark: what halos cost, in FLOPs and in time, and what memory the plan predicts
versus what the process uses. Prints numbers; asserts nothing.

    python tools/bench_tiling.py flops          # full-size Wan 2.1, 720p x 81 (plan only, instant)
    python tools/bench_tiling.py time [--dim 32] # measured CPU time per tile size, 720p, 1 latent frame
    python tools/bench_tiling.py rss [--dim 32]  # peak RSS of a 720p decode vs planned bytes + output
"""
import argparse
import json
import os
import subprocess
import sys
import time

import wanvideo_vae as wv
from wanvideo_vae.cli import PeakRSS
from wanvideo_vae.random_model import random_latents, random_weights

TILES = [("tile 272 (core 256)", 272), ("tile 400 (core 384)", 400), ("whole frame", 0)]
H, W = 90, 160  # 720p latents
NO_BUDGET = 1 << 62  # the plans as asked: the memory free here would shrink the tiles, or refuse the untiled one


def gib(b):
    return f"{b / 2**30:6.2f} GiB"


def plan_table(dec, T):
    base = dec.plan(T, H, W, enable_vae_tiling=False, max_memory=NO_BUDGET)["conv_flops"]
    print(f"{'':22s} {'tiles':>6s} {'conv TFLOP':>11s} {'vs whole':>9s} {'arena (fp32)':>13s} {'of it trunk out':>16s}")
    for label, tile in TILES:
        p = dec.plan(T, H, W, tile_x=tile or 272, tile_y=tile or 272, tile_stride_x=8, tile_stride_y=8,
                     enable_vae_tiling=tile > 0, max_memory=NO_BUDGET)
        print(f"{label:22s} {p['n_tiles']:6d} {p['conv_flops'] / 1e12:11.1f} {p['conv_flops'] / base:8.3f}x "
              f"{gib(p['planned_bytes']):>13s} {gib(p['trunk_out_bytes']):>16s}")


def flops(args):
    dec = wv.Decoder(random_weights(96, 16))
    print("full-size Wan 2.1 decoder, latents [16, 21, 90, 160] -> 81 x 720 x 1280 (plan only)")
    plan_table(dec, 21)


def timing(args):
    dec = wv.Decoder(random_weights(args.dim, 16))
    lat = random_latents(16, args.T, H, W)
    print(f"dim={args.dim} decoder, latents [16, {args.T}, 90, 160] -> 720 x 1280, CPU ({os.cpu_count()} cores)")
    print(f"{'':22s} {'tiles':>6s} {'time':>8s} {'vs whole':>9s} {'conv FLOP ratio':>16s}")
    rows = []
    for label, tile in TILES:
        kw = dict(tile_x=tile, tile_y=tile, tile_stride_x=8, tile_stride_y=8) if tile else dict(enable_vae_tiling=False)
        t0 = time.perf_counter()
        dec.decode(lat, **kw)
        rows.append((label, dec.last_stats["n_tiles"], time.perf_counter() - t0, dec.last_stats["conv_flops"]))
    whole_t, whole_f = rows[-1][2], rows[-1][3]
    for label, n, t, f in rows:
        print(f"{label:22s} {n:6d} {t:7.2f}s {t / whole_t:8.3f}x {f / whole_f:15.3f}x")


def rss_child(args):
    dec = wv.Decoder(random_weights(args.dim, 16))
    lat = random_latents(16, args.T, H, W)
    with PeakRSS() as m:  # resident set size sampled during the decode
        out = dec.decode(lat, tile_x=272, tile_y=272, tile_stride_x=144, tile_stride_y=128)
    peak, before = m.peak, m.base
    print(json.dumps({"peak": peak, "before": before, "planned": dec.last_stats["planned_bytes"],
                      "output": out.nbytes, "weights": dec.last_stats["weight_bytes"],
                      "tiles": dec.last_stats["n_tiles"]}))


def rss(args):
    cmd = [sys.executable, __file__, "rss-child", "--dim", str(args.dim), "--T", str(args.T)]
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    target = r["planned"] + r["output"]
    print(f"dim={args.dim}, latents [16, {args.T}, 90, 160] -> 720p, tile 272 (core 256), {r['tiles']} tiles")
    print(f"planned arena {mib(r['planned'])} + output {mib(r['output'])} = {mib(target)}")
    print(f"process peak RSS during the decode {mib(r['peak'])} (just before it: {mib(r['before'])}, of which "
          f"weights {mib(r['weights'])}); the decode's own peak growth {mib(r['peak'] - r['before'])}")
    print(f"peak RSS / (planned + output) = {r['peak'] / target:.3f}; growth / (planned + output) = "
          f"{(r['peak'] - r['before']) / target:.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["flops", "time", "rss", "rss-child"])
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--T", type=int, default=1)
    args = ap.parse_args()
    {"flops": flops, "time": timing, "rss": rss, "rss-child": rss_child}[args.what](args)


if __name__ == "__main__":
    main()
