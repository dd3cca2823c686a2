"""Tissue versus bare slide: Otsu's threshold on HSV saturation, shared by tiling and whole-slide prediction."""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

# Saturation cut-off for "tissue" is Otsu's threshold clamped to this range: the floor keeps a blank slide
# from being split in two by Otsu, the ceiling keeps an all-tissue image from losing its paler half.
SATURATION_CLAMP = (20, 60)


def saturation(image: np.ndarray) -> np.ndarray:
    """HSV saturation (0..255 uint8) of an (h, w, 3) RGB uint8 image."""
    return cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[..., 1]


def tissue_cutoff(image: np.ndarray) -> int:
    """Saturation level separating tissue from background: Otsu on a <=1024 px copy, clamped."""
    scale = 1024 / max(image.shape[:2])
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image
    otsu, _ = cv2.threshold(saturation(small), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return int(np.clip(otsu, *SATURATION_CLAMP))


def tissue_fraction(tile: np.ndarray, cutoff: int) -> float:
    """Fraction of a tile's pixels whose saturation exceeds the image's tissue cut-off."""
    return float((saturation(tile) > cutoff).mean())


def tissue_mask(thumbnail: np.ndarray, pixel_size: float, close_um: float = 100.0) -> np.ndarray:
    """Bool tissue map of a low-resolution slide image at pixel_size um/px.

    Saturation above Otsu's cut-off, closed over close_um and hole-filled: pale FTUs (alveolar air, gland
    lumina) lie inside tissue and must not read as bare slide.
    """
    mask = saturation(thumbnail) > tissue_cutoff(thumbnail)
    radius = max(1, round(close_um / 2 / pixel_size))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    padded = cv2.copyMakeBorder(mask.view(np.uint8), radius, radius, radius, radius, cv2.BORDER_CONSTANT, value=0)
    closed = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, kernel)[radius:-radius, radius:-radius]
    return ndimage.binary_fill_holes(closed.astype(bool))
