"""Test-time views beyond flips: multi-scale ratios (1st place) and stain-normalised copies (4th place).

Multi-scale (mmseg's MultiScaleFlipAug with `img_ratios`): a member predicts its working image resampled by each
ratio (with the flip views of --tta at every ratio), each probability map is resized back to the working size
and the maps are averaged with equal weights. Ratios (1,) is exactly the single-scale path: the same call, no
resize, no division.

Stain views: the image as it is plus its copies normalised to the training stain (inference.stain: Macenko and
Reinhard against a --stain-reference fit); every member predicts every view and its probabilities are averaged.
A view that normalisation left unchanged (a blank or single-stain image) is not predicted twice.
"""

from __future__ import annotations

import argparse
import math
from functools import lru_cache

import numpy as np

from inference import tiling
from inference.engine.predictor import Predictor
from inference.engine.sliding import WindowFilter
from inference.tiling import resize_probs

STAIN_METHODS = ("macenko", "reinhard")
MAX_RATIO = 4.0  # a ratio beyond this is a typo (16x the windows), not a TTA view


class ViewArgumentError(argparse.ArgumentTypeError, ValueError):
    """A bad --tta-scales / --stain-tta value: argparse prints its message, other callers catch a ValueError."""


def parse_scales(text: str) -> tuple[float, ...]:
    """'0.8,1,1.2' -> (0.8, 1.0, 1.2): positive ratios up to MAX_RATIO, no repeats (argparse type)."""
    try:
        scales = tuple(float(s) for s in str(text).split(",") if s.strip())
    except ValueError:
        raise ViewArgumentError(f"--tta-scales {text!r}: expected comma-separated ratios like 0.8,1,1.2") from None
    if not scales:
        raise ViewArgumentError("--tta-scales needs at least one ratio")
    bad = [s for s in scales if not (math.isfinite(s) and 0 < s <= MAX_RATIO)]
    if bad:
        raise ViewArgumentError(f"--tta-scales ratios must be in (0, {MAX_RATIO:g}], got {bad}")
    if len(set(scales)) != len(scales):
        raise ViewArgumentError(f"--tta-scales {text!r} repeats a ratio")
    return scales


def parse_stain_methods(text: str) -> tuple[str, ...]:
    """'macenko,reinhard' -> ('macenko', 'reinhard') (argparse type)."""
    methods = tuple(m.strip().lower() for m in str(text).split(",") if m.strip())
    bad = sorted(set(methods) - set(STAIN_METHODS))
    if not methods or bad:
        raise ViewArgumentError(f"--stain-tta methods must be among {list(STAIN_METHODS)}, got {text!r}")
    return tuple(dict.fromkeys(methods))


def predict_scales(
    predictor: Predictor,
    image: np.ndarray,
    size: tuple[int, int],
    tta: int = 0,
    scales: tuple[float, ...] = (1.0,),
    windows: WindowFilter | None = None,
    max_side: int | None = None,
) -> np.ndarray:
    """(C, h, w) mean probabilities over the ratios, at the working size (h, w); (1,) is predict_working itself."""
    if tuple(scales) == (1.0,):
        return predictor.predict_working(image, size, tta, windows)
    total = None
    for ratio in scales:
        probs = resize_probs(predictor.predict_working(image, tiling.scaled_size(*size, ratio, max_side), tta, windows), *size)
        if total is None:
            total = probs  # a fresh array: predict_working allocates its output
        else:
            total += probs
    return total / np.float32(len(scales))


def predict_views(
    predictor: Predictor,
    images: list[np.ndarray],
    size: tuple[int, int],
    tta: int = 0,
    scales: tuple[float, ...] = (1.0,),
    windows: WindowFilter | None = None,
    max_side: int | None = None,
) -> np.ndarray:
    """(C, h, w) mean of predict_scales over same-sized views of one image (one view: predict_scales itself)."""
    total = predict_scales(predictor, images[0], size, tta, scales, windows, max_side)
    if len(images) == 1:
        return total
    for view in images[1:]:
        total += predict_scales(predictor, view, size, tta, scales, windows, max_side)
    return total / np.float32(len(images))


@lru_cache(maxsize=4)
def _reference(source: str):  # noqa: ANN202 - StainReference, imported lazily with torchstain
    from inference.stain import load_reference

    return load_reference(source)


def stain_views(image: np.ndarray, reference: str, methods: tuple[str, ...]) -> list[np.ndarray]:
    """The image's copies normalised to `reference` by each method, leaving out those normalisation skipped."""
    from inference.stain import normalise_stain, reinhard_normalise  # torchstain only where stain TTA is asked for

    ref = _reference(str(reference))
    views = []
    for method in methods:
        view = normalise_stain(image, ref) if method == "macenko" else reinhard_normalise(image, ref)
        if view is not image:
            views.append(view)
    return views
