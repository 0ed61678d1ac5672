"""Prints the largest absolute difference between two .npy arrays of one shape, a block of frames
at a time (both memory-mapped: a 720p x 81 decode is 0.9 GB each).

    python tools/max_diff.py LABEL A.npy B.npy
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
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    label, a, b = sys.argv[1], *(np.load(path, mmap_mode="r") for path in sys.argv[2:])
    print(f"{label}: max |diff| {max_abs_diff(a, b):.3g}")


if __name__ == "__main__":
    main()
