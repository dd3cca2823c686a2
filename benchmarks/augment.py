"""Augmentation cost per tile: our warp and stain transforms beside albumentations' own, every preset, and the
inference stain normalisation beside torchstain's own normalize.

    python benchmarks/augment.py [--size 768] [--repeat 30] [--normalise-side 3000]

Times each transform alone (p=1, image + mask) on a --size tile in one process, one thread, and prints ms per
tile and the ratio to albumentations' GridDistortion (warps) or HueSaturationValue (colour). albumentations'
PiecewiseAffine loops over pixels in Python, so it is timed once on a 256 px tile beside ours at 256 px. Then
each preset pipeline (ms per tile), and normalise_stain against torchstain's NumpyMacenkoNormalizer.normalize on
one --normalise-side image (same result to one grey level; ratio of seconds).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from data_prep.augment import (  # noqa: E402
    PRESETS,
    BoundedPiecewiseAffine,
    HEDJitter,
    StainTransfer,
    train_transforms,
)
from inference.cli import hidden_alias  # noqa: E402


def per_call_ms(call: Callable[[], object], repeats: int) -> float:
    """Median wall time of one call in ms, after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def tile(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth stained-looking RGB tile and a two-class mask (content does not change these timings)."""
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (0, 0), 3)
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (size // 2, size // 2), size // 4, 1, -1)
    return image, mask


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--repeat", dest="repeats", type=int, default=30, help="timed calls per transform")
    hidden_alias(ap, "--repeats", "--repeat")  # the old spelling; the other benchmarks say --repeat
    ap.add_argument("--normalise-side", type=int, default=3000)
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    import albumentations as A

    image, mask = tile(args.size)
    reflect = cv2.BORDER_REFLECT_101
    groups = {
        "warp": {
            "GridDistortion (albumentations)": A.GridDistortion(num_steps=5, distort_limit=0.3, border_mode=reflect),
            "ElasticTransform (albumentations)": A.ElasticTransform(border_mode=reflect),
            "OpticalDistortion (albumentations)": A.OpticalDistortion(distort_limit=0.1, border_mode=reflect),
            "BoundedPiecewiseAffine (ours)": BoundedPiecewiseAffine(scale=(0.02, 0.04), nb_rows=4, nb_cols=4),
        },
        "colour": {
            "HueSaturationValue (albumentations)": A.HueSaturationValue(),
            "HEDJitter (ours)": HEDJitter(),
            "StainTransfer (ours)": StainTransfer(),
        },
    }
    print(f"ms per {args.size} px tile (image + mask, p=1, one thread, median of {args.repeats})")
    for group in groups.values():
        times = {}
        for name, transform in group.items():
            transform.p = 1.0
            times[name] = per_call_ms(lambda t=transform: t(image=image, mask=mask), args.repeats)
        baseline = next(iter(times.values()))
        for name, ms in times.items():
            print(f"  {name:40s} {ms:8.1f} ms  x{ms / baseline:.2f}")
    small, small_mask = tile(256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # its own "very slow" warning
        theirs = A.PiecewiseAffine(scale=(0.02, 0.04), nb_rows=4, nb_cols=4, p=1.0)
    ours = BoundedPiecewiseAffine(scale=(0.02, 0.04), nb_rows=4, nb_cols=4, p=1.0)
    slow = per_call_ms(lambda: theirs(image=small, mask=small_mask), 1)
    fast = per_call_ms(lambda: ours(image=small, mask=small_mask), args.repeats)
    print(f"  256 px: PiecewiseAffine (albumentations) {slow:.0f} ms, ours {fast:.1f} ms: {slow / fast:.0f}x faster")
    print(f"presets, ms per {args.size} px tile (mean of {args.repeats} draws)")
    for preset in PRESETS:
        compose = train_transforms(preset, seed=0)
        start = time.perf_counter()
        for _ in range(args.repeats):
            compose(image=image, mask=mask)
        print(f"  {preset:40s} {1000 * (time.perf_counter() - start) / args.repeats:8.1f} ms")

    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    from inference.stain import fit_reference, normalise_stain

    # A two-stain (hematoxylin + eosin) Beer-Lambert image, normalised to a hematoxylin + DAB reference.
    rng = np.random.default_rng(0)
    side = args.normalise_side
    amounts = cv2.GaussianBlur(rng.uniform(0, 1.6, (side, side, 2)).astype(np.float32), (0, 0), 2)
    amounts *= rng.random((side, side, 2)) < 0.7
    he = np.array([[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581]], np.float32)
    hd = np.array([[0.65, 0.70, 0.29], [0.27, 0.57, 0.78]], np.float32)
    he_image = np.clip(250 * np.exp(-(amounts @ he)), 0, 255).astype(np.uint8)
    reference = fit_reference([np.clip(250 * np.exp(-(amounts[:512, :512] @ hd)), 0, 255).astype(np.uint8)])
    normalizer = NumpyMacenkoNormalizer()
    normalizer.HERef, normalizer.maxCRef = reference.stain_matrix, reference.max_concentrations
    start = time.perf_counter()
    expected, _, _ = normalizer.normalize(he_image, stains=False)
    theirs_s = time.perf_counter() - start
    start = time.perf_counter()
    result = normalise_stain(he_image, reference)
    ours_s = time.perf_counter() - start
    diff = int(np.abs(result.astype(int) - expected).max())
    print(
        f"stain normalisation of a {side} px image: torchstain normalize {theirs_s:.2f} s, normalise_stain "
        f"{ours_s:.2f} s ({theirs_s / ours_s:.1f}x faster), max difference {diff} grey level(s)"
    )


if __name__ == "__main__":
    main()
