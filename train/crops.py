"""Random training crops at a physical scale: organ-balanced, a share centred on FTUs, every FTU size alike.

The sampler draws from a tile set's whole images resampled to the model's um/px (data_prep.tiles --scaled P):
1. an organ, uniformly among the organs present (organ_balance), else an image uniformly;
2. an image of that organ, uniformly;
3. a centre: with probability ftu_share a pixel of one FTU picked uniformly among the image's FTUs (connected
   components), so a small glomerulus is as likely as a large white-pulp nodule; else a uniform pixel;
   the crop is shifted by up to a quarter of its side so the FTU is not always in the middle;
4. a scale s, log-uniform in scale_range: the crop covers size * s scaled pixels (s > 1 zooms out), then is
   resized to size; with probability lowres_prob it is also blurred through a lower resolution (down by a
   factor in lowres_range, back up), the look of a small HuBMAP image upsampled to the training scale.
5. with context k > 1 (MRN models), a context view centred on the same point covering k x the crop's field,
   resized to size, as inference.engine.sliding builds it for MRN checkpoints.
Crops that leave the image are reflection-padded, as the sliding-window predictor pads.
With stain_copy_share > 0 and stain-transferred copies of the image (data_prep.stain_copies), a crop is cut
from one of the copies, drawn uniformly, with that probability (same geometry and mask, target-domain colours).
Mask pixels of IGNORE_INDEX (pseudo-label bands) are never FTU centres.

Why: kidney and spleen FTUs are small or rare next to crypts and glands; the multi-scale tile sets showed each
image whole at 3000 / 256 = 12x downscale, where a glomerulus is a 17 px dot, and never centred a tile on one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import cv2
import numpy as np

from data_prep.tileset import ftu_pixels
from inference.engine.sliding import reflect_indices
from inference.tiling import context_window, resize_image

POINTS_PER_FTU = 64  # pixels remembered per FTU component: enough to vary the centre, little memory


@dataclass(frozen=True)
class CropSettings:
    size: int  # output side in pixels (the model input)
    ftu_share: float = 0.5  # probability that a crop is centred on an FTU
    organ_balance: bool = True  # draw organs uniformly, not images
    scale_range: tuple[float, float] = (1.0, 1.0)  # crop side / size, log-uniform (1 = the trained um/px)
    lowres_prob: float = 0.0  # probability of blurring a crop through a lower resolution
    lowres_range: tuple[float, float] = (2.0, 8.0)  # the down-and-up factor of that blur
    context: int = 1  # MRN: also a view of context x the crop's field around the same centre (1: none)
    stain_copy_share: float = 0.0  # probability of cutting the crop from a stain copy of the image (0: never)

    def __post_init__(self) -> None:
        if not 0.0 <= self.ftu_share <= 1.0 or not 0.0 <= self.lowres_prob <= 1.0:
            raise ValueError(f"ftu_share and lowres_prob must be in [0, 1], got {self.ftu_share}, {self.lowres_prob}")
        if not 0.0 <= self.stain_copy_share <= 1.0:
            raise ValueError(f"stain_copy_share must be in [0, 1], got {self.stain_copy_share}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be 0 < low <= high, got {self.scale_range}")
        if not 1.0 <= self.lowres_range[0] <= self.lowres_range[1]:
            raise ValueError(f"lowres_range must be 1 <= low <= high, got {self.lowres_range}")
        if self.context < 1:
            raise ValueError(f"context must be >= 1, got {self.context}")


class Crop(NamedTuple):
    image: np.ndarray  # (size, size, 3) uint8
    mask: np.ndarray  # (size, size) uint8 class index
    context: np.ndarray | None  # (size, size, 3) uint8 view of context x the field, or None


def ftu_points(mask: np.ndarray, rng: np.random.Generator, per_ftu: int = POINTS_PER_FTU) -> list[np.ndarray]:
    """Up to per_ftu (y, x) pixels of each FTU (8-connected component of FTU pixels), one array per FTU."""
    count, labels = cv2.connectedComponents(ftu_pixels(mask).astype(np.uint8), connectivity=8)
    if count <= 1:
        return []
    ys, xs = np.nonzero(labels)
    order = np.argsort(labels[ys, xs], kind="stable")
    ys, xs, lab = ys[order], xs[order], labels[ys, xs][order]
    bounds = np.searchsorted(lab, np.arange(1, count + 1))
    points = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        pick = rng.choice(stop - start, size=min(per_ftu, stop - start), replace=False) + start
        points.append(np.stack([ys[pick], xs[pick]], 1).astype(np.int32))
    return points


def _window(length: int, start: int, side: int) -> slice | np.ndarray:
    """Indices of [start, start + side) along an axis of `length`, reflected at the borders where it leaves."""
    before, after = max(0, -start), max(0, start + side - length)
    if not before and not after:
        return slice(start, start + side)
    return reflect_indices(length, before, after)[start + before : start + before + side]


def crop_reflect(array: np.ndarray, y0: int, x0: int, side: int) -> np.ndarray:
    """array[y0:y0+side, x0:x0+side], padded by symmetric reflection where it leaves the array.

    The same reflection (inference.engine.sliding.reflect_indices) as the sliding-window predictor pads images with.
    Where each border is no wider than the part inside the array, OpenCV's BORDER_REFLECT pads that part to the same
    pixels as the index reflection, in one copy instead of two gathers (about 10x faster on a 1024 px crop,
    benchmarks/data_pipeline.py); wider borders (several reflections) take the index path.
    """
    h, w = array.shape[:2]
    top, bottom = max(0, -y0), max(0, y0 + side - h)
    left, right = max(0, -x0), max(0, x0 + side - w)
    inner = array[max(0, y0) : min(h, y0 + side), max(0, x0) : min(w, x0 + side)]
    if not (top or bottom or left or right):
        return inner
    if max(top, bottom) <= inner.shape[0] and max(left, right) <= inner.shape[1] and array.dtype == np.uint8:
        return cv2.copyMakeBorder(inner, top, bottom, left, right, cv2.BORDER_REFLECT)
    rows, cols = _window(h, y0, side), _window(w, x0, side)
    return array[rows][:, cols]


@dataclass
class ScaledImage:
    """One training image at the trained um/px, with its class-index mask and FTU points."""

    image_id: str
    organ: str
    image: np.ndarray  # (h, w, 3) uint8
    mask: np.ndarray  # (h, w) uint8 class index (IGNORE_INDEX: no loss)
    points: list[np.ndarray]
    copies: list[np.ndarray] = field(default_factory=list)  # stain-transferred renderings of image, same size


class CropSampler:
    """Draws (image, mask) crops of settings.size from ScaledImages; see the module docstring."""

    def __init__(self, images: list[ScaledImage], settings: CropSettings) -> None:
        if not images:
            raise ValueError("CropSampler needs at least one image")
        self.images, self.settings = images, settings
        self.by_organ: dict[str, list[int]] = {}
        for i, item in enumerate(images):
            self.by_organ.setdefault(item.organ, []).append(i)
        self.organs = sorted(self.by_organ)

    def pick_image(self, rng: np.random.Generator) -> ScaledImage:
        """An image, organ-balanced when configured."""
        if self.settings.organ_balance:
            members = self.by_organ[self.organs[rng.integers(len(self.organs))]]
            return self.images[members[rng.integers(len(members))]]
        return self.images[rng.integers(len(self.images))]

    def crop(self, item: ScaledImage, rng: np.random.Generator) -> Crop:
        """One crop of settings.size from one image (and its context view when settings.context > 1)."""
        s = self.settings
        h, w = item.mask.shape
        source = item.image
        if item.copies and s.stain_copy_share and rng.random() < s.stain_copy_share:  # no draw at share 0
            source = item.copies[rng.integers(len(item.copies))]
        lo, hi = np.log(s.scale_range)
        side = max(2, round(s.size * float(np.exp(rng.uniform(lo, hi)))))
        if item.points and rng.random() < s.ftu_share:
            ftu = item.points[rng.integers(len(item.points))]
            cy, cx = ftu[rng.integers(len(ftu))]
            cy += int(rng.integers(-(side // 4), side // 4 + 1))
            cx += int(rng.integers(-(side // 4), side // 4 + 1))
        else:
            cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, x0 = int(cy) - side // 2, int(cx) - side // 2
        image = resize_image(crop_reflect(source, y0, x0, side), s.size, s.size)
        mask = resize_image(crop_reflect(item.mask, y0, x0, side), s.size, s.size, nearest=True)
        context = None
        if s.context > 1:  # same centre as the crop: the crop is the context view's central 1/k
            wy, wx, wide = context_window(y0, x0, side, s.context)
            context = resize_image(crop_reflect(source, wy, wx, wide), s.size, s.size)
        if s.lowres_prob and rng.random() < s.lowres_prob:
            small = max(2, round(s.size / rng.uniform(*s.lowres_range)))
            image = resize_image(resize_image(image, small, small), s.size, s.size)
            if context is not None:
                context = resize_image(resize_image(context, small, small), s.size, s.size)
        return Crop(np.ascontiguousarray(image), np.ascontiguousarray(mask),
                    None if context is None else np.ascontiguousarray(context))

    def sample(self, rng: np.random.Generator) -> Crop:
        """Pick an image and crop it."""
        return self.crop(self.pick_image(rng), rng)
