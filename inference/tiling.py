"""Tile geometry shared by data prep, training validation and inference.

Boxes are (x0, y0, x1, y1) in pixel coordinates, x1/y1 exclusive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

Box = tuple[int, int, int, int]


def split_boxes(height: int, width: int, n: int) -> list[Box]:
    """Cut an image into n x n near-equal parts, row by row; parts tile the image exactly."""
    if n < 1:
        raise ValueError(f"split must be at least 1, got {n}")
    xs = [round(i * width / n) for i in range(n + 1)]
    ys = [round(i * height / n) for i in range(n + 1)]
    return [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(n) for i in range(n)]


def window_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of windows of `tile` pixels every `stride` pixels covering [0, length).

    The last window is shifted back to end at the border, so no window leaves the image unless the
    image is shorter than one tile (then the single window at 0 needs padding up to `tile`).
    """
    if tile < 1 or stride < 1:
        raise ValueError(f"tile and stride must be positive, got tile={tile}, stride={stride}")
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def grid_boxes(height: int, width: int, tile: int, stride: int) -> list[Box]:
    """Sliding-window boxes of tile x tile covering an image (see window_starts)."""
    return [
        (x, y, x + tile, y + tile)
        for y in window_starts(height, tile, stride)
        for x in window_starts(width, tile, stride)
    ]


def stride_for(tile: int, overlap: float) -> int:
    """Window stride for an overlap fraction in [0, 1)."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return max(1, int(round(tile * (1.0 - overlap))))


def adaptive_reduce(height: int, width: int, tile: int, k: float = 1.0) -> int:
    """The seed team's rule: reduce = ceil(max(h, w) / (tile * k)), at least 1."""
    if tile < 1 or k <= 0:
        raise ValueError(f"tile must be positive and k > 0, got tile={tile}, k={k}")
    return max(1, math.ceil(max(height, width) / (tile * k)))


def resize_image(array: np.ndarray, height: int, width: int, nearest: bool = False) -> np.ndarray:
    """Resize an image to (height, width): area averaging when shrinking, bilinear when enlarging.

    nearest=True keeps class-index masks class-valued. A same-size call returns the input.
    """
    if array.shape[:2] == (height, width):
        return array
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if height * width < array.shape[0] * array.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(array, (width, height), interpolation=interp)


def reassemble(
    tiles: Sequence[np.ndarray],
    boxes: Sequence[Box],
    height: int,
    width: int,
    scale: float = 1.0,
    nearest: bool = False,
) -> np.ndarray:
    """Paste per-tile maps back onto an image canvas, averaging where tiles overlap.

    Each tile (any resolution) is resized to its box scaled by `scale`; the canvas has shape
    (round(height * scale), round(width * scale)) and is float32. Parts of a box beyond the image
    (padded tiles) are cropped; canvas pixels that no tile covers stay 0.
    """
    if len(tiles) != len(boxes):
        raise ValueError(f"reassemble: {len(tiles)} tiles but {len(boxes)} boxes")
    ch, cw = round(height * scale), round(width * scale)
    acc = np.zeros((ch, cw), dtype=np.float32)
    hits = np.zeros((ch, cw), dtype=np.float32)
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    for tile, (x0, y0, x1, y1) in zip(tiles, boxes, strict=True):
        sx0, sy0 = round(x0 * scale), round(y0 * scale)
        sx1, sy1 = max(sx0 + 1, round(x1 * scale)), max(sy0 + 1, round(y1 * scale))
        resized = cv2.resize(np.asarray(tile, dtype=np.float32), (sx1 - sx0, sy1 - sy0), interpolation=interp)
        cx1, cy1 = min(sx1, cw), min(sy1, ch)
        acc[sy0:cy1, sx0:cx1] += resized[: cy1 - sy0, : cx1 - sx0]
        hits[sy0:cy1, sx0:cx1] += 1.0
    np.divide(acc, hits, out=acc, where=hits > 0)
    return acc


def resize_probs(probs: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, h, w) float maps to (C, height, width) float32: area averaging when shrinking (no aliasing), else bilinear."""
    if probs.shape[1:] == (height, width):
        return probs.astype(np.float32, copy=False)
    planes = [resize_image(np.ascontiguousarray(plane, dtype=np.float32), height, width) for plane in probs]
    return planes[0][None] if len(planes) == 1 else np.stack(planes)


def context_window(y0: float, x0: float, side: float, k: int) -> tuple[float, float, float]:
    """(y0, x0, side) of the context view of a square window: k x its side around the same centre (MRN).

    The one geometry of the crop sampler, data_prep.wsi_tiles --context and the sliding window. Integer windows
    give integer squares (the margin rounds down); fractional ones (slide coordinates) stay fractional.
    """
    margin = (k - 1) * side // 2 if isinstance(side, int) else (k - 1) * side / 2
    return y0 - margin, x0 - margin, k * side


def scaled_size(height: int, width: int, factor: float, max_side: int | None = None) -> tuple[int, int]:
    """(h, w) resampled by factor, each side at least 1 px, the longer side capped at max_side (aspect kept).

    The one resampling rule of the tile sets' whole images (data_prep.tiles --scaled), the Predictor's working
    scale and the multi-scale TTA ratios, so training and inference cannot drift apart.
    """
    if max_side is not None:
        factor = min(factor, max_side / max(height, width))
    return max(1, round(height * factor)), max(1, round(width * factor))
