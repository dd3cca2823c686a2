"""Clean a binary FTU mask: fill holes, drop connected components below an organ-specific area.

Areas are given in square micrometres so one setting fits HPA and HuBMAP images of the same organ
(their pixel sizes differ up to 16x); they are converted with the image's pixel_size.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from inference.organs import ORGANS


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions fully enclosed by foreground."""
    return ndimage.binary_fill_holes(mask.astype(bool))


def remove_small(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """Drop 8-connected components with fewer than min_pixels pixels."""
    mask = mask.astype(bool)
    if min_pixels <= 1 or not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_pixels
    keep[0] = False
    return keep[labels]


def load_min_area(spec: str | None) -> dict[str, float]:
    """Parse --min-area: a number (um^2, every organ) or a JSON file {"kidney": 2000, ...}; None -> {}."""
    if spec is None:
        return {}
    try:
        value = float(spec)
    except ValueError:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"--min-area {spec!r} is neither a number (um^2) nor a JSON file") from None
        data = json.loads(path.read_text())
        unknown = sorted(set(data) - set(ORGANS))
        if unknown:
            raise ValueError(f"{path}: unknown organ(s) {unknown}; expected keys among {list(ORGANS)}") from None
        return {k: float(v) for k, v in data.items()}
    if value < 0:
        raise ValueError(f"--min-area must be >= 0 um^2, got {value}")
    return dict.fromkeys(ORGANS, value)


def postprocess(
    mask: np.ndarray,
    organ: str,
    pixel_size: float | None,
    holes: bool = False,
    min_area_um2: dict[str, float] | None = None,
) -> np.ndarray:
    """Apply the chosen clean-ups to one image's boolean mask (areas in um^2 -> pixels via pixel_size)."""
    if holes:
        mask = fill_holes(mask)
    area = (min_area_um2 or {}).get(organ, 0.0)
    if area > 0:
        if pixel_size is None or not pixel_size > 0:
            raise ValueError(f"min-area for {organ} needs the image's pixel_size, got {pixel_size}")
        mask = remove_small(mask, int(np.ceil(area / pixel_size**2)))
    return mask.astype(bool, copy=False)
