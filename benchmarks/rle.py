"""RLE speed on a 4500x4500 mask against a plain vectorised numpy encoder, measured in one run.

    python benchmarks/rle.py [--image-side 4500] [--repeat 5]

Targets (issue 2): encode <= 1.5x and decode <= 2x the baseline encoder's time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from inference.cli import hidden_alias  # noqa: E402
from inference.rle import decode, encode  # noqa: E402


def baseline_encode(mask: np.ndarray) -> str:
    """The straightforward vectorised encoder: flatnonzero over the transposed, padded mask."""
    pixels = np.concatenate([[0], mask.T.ravel(), [0]])
    runs = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    runs[1::2] -= runs[::2]
    return " ".join(map(str, runs))


def make_mask(size: int, seed: int = 0) -> np.ndarray:
    """A mask with many FTU-like blobs (about 2,000 ellipses), like a dense glomeruli/crypt image."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(2000):
        center = tuple(int(v) for v in rng.integers(0, size, 2))
        axes = tuple(int(v) for v in rng.integers(10, 60, 2))
        cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return mask


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-side", type=int, default=4500, help="side of the square mask")
    ap.add_argument("--repeat", type=int, default=5)
    hidden_alias(ap, "--size", "--image-side")  # the old spelling (--size is a tile side elsewhere)
    args = ap.parse_args(argv)
    mask = make_mask(args.image_side)
    rle = encode(mask)
    assert rle == baseline_encode(mask), "our encoder disagrees with the baseline"
    assert np.array_equal(decode(rle, args.image_side, args.image_side), mask), "decode does not invert encode"
    t_base = best_of(lambda: baseline_encode(mask), args.repeat)
    t_enc = best_of(lambda: encode(mask), args.repeat)
    t_dec = best_of(lambda: decode(rle, args.image_side, args.image_side), args.repeat)
    print(f"{args.image_side}x{args.image_side} mask, {len(rle.split()) // 2} runs, {mask.mean():.1%} foreground, best of {args.repeat}")
    print(f"baseline encode  {t_base * 1e3:8.1f} ms")
    print(f"our encode       {t_enc * 1e3:8.1f} ms   ratio {t_enc / t_base:.2f}x (target <= 1.5x)")
    print(f"our decode       {t_dec * 1e3:8.1f} ms   ratio {t_dec / t_base:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
