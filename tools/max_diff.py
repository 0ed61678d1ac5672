"""Prints the largest absolute difference between two .npy arrays of one shape, a block of frames
at a time (both memory-mapped: a 720p x 81 decode is 0.9 GB each); exits 1 past TOL when given.

    python tools/max_diff.py LABEL A.npy B.npy [TOL]
"""
import sys

import numpy as np


def max_abs_diff(a, b, block=8):
    if a.shape != b.shape:
        raise SystemExit(f"shapes differ: {a.shape} and {b.shape}")
    worst = 0.0
    for i in range(0, len(a), block):
        d = np.abs(a[i:i + block].astype(np.float64) - b[i:i + block])
        worst = max(worst, float(np.nan_to_num(d, nan=np.inf).max(initial=0.0)))
    return worst


def main():
    if len(sys.argv) not in (4, 5):
        raise SystemExit(__doc__)
    label, a, b = sys.argv[1], *(np.load(path, mmap_mode="r") for path in sys.argv[2:4])
    tol = float(sys.argv[4]) if len(sys.argv) == 5 else None
    worst = max_abs_diff(a, b)
    verdict = "" if tol is None else f" ({'ok' if worst <= tol else 'FAIL'}: tolerance {tol:g})"
    print(f"{label}: max |diff| {worst:.3g}{verdict}")
    if tol is not None and not worst <= tol:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
