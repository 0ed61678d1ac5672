"""python -m wanvideo_vae [demo | patch-workflow IN OUT]

demo (the default): decode seeded random latents with a seeded random full-size Wan 2.1 decoder and
print time and memory. The weights are random: this shows speed and memory, not a picture.
patch-workflow: rewrite a ComfyUI workflow's WanVideoDecode nodes to the native exact decoder."""
import argparse
import sys
import time

from . import Decoder, WanVAEError
from .random_model import random_latents, random_weights
from .workflow import patch_workflow_file


def peak_rss_bytes():
    try:
        import resource
    except ImportError:  # Windows
        return None
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def mib(n):
    return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


def demo(args):
    try:
        print("wanvideo_vae: RANDOM full-size Wan 2.1 decoder weights (seeded) - timing and memory only")
        dec = Decoder(random_weights(96, 16, seed=args.seed))
        lat = random_latents(16, args.frames, args.height, args.width, seed=args.seed)
        t0 = time.perf_counter()
        frames = dec.decode(lat, tile_x=args.tile, tile_y=args.tile, tile_stride_x=max(1, args.tile - 8),
                            tile_stride_y=max(1, args.tile - 8), enable_vae_tiling=args.tile > 0)
        dt = time.perf_counter() - t0
    except WanVAEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = dec.last_stats
    print(f"latents [16, {args.frames}, {args.height}, {args.width}] -> frames {list(frames.shape)} float32 in [0, 1]")
    print(f"backend {s['backend']}, tiles {s['tiles_x']}x{s['tiles_y']} (core {s['core_x']}x{s['core_y']} px, "
          f"halo {s['out_halo']} px at the output)")
    print(f"time {dt:.2f} s (trunk {s['seconds_trunk']:.2f} s, tiles {s['seconds_tiles']:.2f} s), "
          f"{s['conv_flops'] / dt / 1e9:.1f} GFLOP/s of convolutions")
    print(f"memory: weights {mib(s['weight_bytes'])}, decode arena {mib(s['planned_bytes'])} "
          f"(high water {mib(s['arena_high_water'])}), output {mib(frames.nbytes)}, process peak RSS {mib(peak_rss_bytes())}")
    return 0


def patch_workflow_cmd(args):
    try:
        count = patch_workflow_file(args.src, args.dst)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.dst}: {count} WanVideoDecode node(s) now use WanVideoNativeDecode")
    return 0


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m wanvideo_vae", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command")
    d = sub.add_parser("demo", help="decode random latents with a random full-size decoder (the default)")
    d.add_argument("--frames", type=int, default=3, help="latent frames T (output 1 + 4 (T - 1))")
    d.add_argument("--height", type=int, default=16, help="latent height h (output 8 h)")
    d.add_argument("--width", type=int, default=16, help="latent width w (output 8 w)")
    d.add_argument("--tile", type=int, default=0, help="tile size in output pixels (0: whole frame)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=demo)
    p = sub.add_parser("patch-workflow", help="rewrite a workflow's WanVideoDecode nodes to the native decoder")
    p.add_argument("src", help="workflow JSON (UI or API format)")
    p.add_argument("dst", help="where to write the patched workflow")
    p.set_defaults(func=patch_workflow_cmd)
    return ap


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv or ["demo"])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
