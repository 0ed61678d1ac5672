"""Prints the largest absolute difference between two .npy arrays of one shape, and their PSNR (peak 1:
frames on [0, 1]), a block of frames at a time (both memory-mapped: a 720p x 81 decode is 0.9 GB each);
exits 1 past TOL, or under MIN_PSNR dB, when given.

    python tools/max_diff.py LABEL A.npy B.npy [TOL [MIN_PSNR]]
"""
import math
import sys

import numpy as np


def compare(a, b, block=8):
    """(max |a - b|, PSNR in dB with peak 1: inf where they are equal); NaN counts as an infinite difference."""
    if a.shape != b.shape:
        raise SystemExit(f"shapes differ: {a.shape} and {b.shape}")
    worst, squares = 0.0, 0.0
    for i in range(0, len(a), block):
        d = np.nan_to_num(np.abs(a[i:i + block].astype(np.float64) - b[i:i + block]), nan=np.inf)
        worst = max(worst, float(d.max(initial=0.0)))
        squares += float(np.square(d).sum())
    mse = squares / max(a.size, 1)
    return worst, (math.inf if mse == 0 else -10.0 * math.log10(mse))


def main():
    if len(sys.argv) not in (4, 5, 6):
        raise SystemExit(__doc__)
    label, a, b = sys.argv[1], *(np.load(path, mmap_mode="r") for path in sys.argv[2:4])
    tol = float(sys.argv[4]) if len(sys.argv) > 4 else None
    min_psnr = float(sys.argv[5]) if len(sys.argv) > 5 else None
    worst, psnr = compare(a, b)
    right = (tol is None or worst <= tol) and (min_psnr is None or psnr >= min_psnr)
    bounds = [f"tolerance {tol:g}"] if tol is not None else []
    bounds += [f"PSNR >= {min_psnr:g} dB"] if min_psnr is not None else []
    verdict = f" ({'ok' if right else 'FAIL'}: {', '.join(bounds)})" if bounds else ""
    print(f"{label}: max |diff| {worst:.3g}, PSNR {psnr:.1f} dB{verdict}")
    if not right:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
