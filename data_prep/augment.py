"""Train/validation augmentations shared by both trainers, as named presets chosen by config.

Presets: "flips" (flips and 90-degree rotations), "seed10" (the seed team's ten transforms: flips/rotate90,
affine shift-scale-rotate, Gauss noise, Gauss blur, brightness/contrast, hue/saturation/value, optical,
grid and piecewise-affine distortion) and "seed10+stain" (seed10 plus HED stain jitter for the HPA ->
HuBMAP stain shift). They take and return a uint8 HWC image and a uint8 class-index mask of the same size,
without normalisation (trainers normalise with the checkpoint's mean/std).

Argument names are albumentations 2.x ones: 2.0.8 only warns about 1.x names such as
GaussNoise(var_limit=...) and then ignores them, so tests/test_augment.py turns its warnings into errors.
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # its import-time PyPI version check fails offline

from typing import Any  # noqa: E402

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from albumentations.core.transforms_interface import BaseTransformInitSchema  # noqa: E402
from pydantic import Field  # noqa: E402

PRESETS: tuple[str, ...] = ("flips", "seed10", "seed10+stain")

# Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB) in RGB optical density, as in skimage.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
_OPTICAL_DENSITY = (-np.log((np.arange(256) + 1.0) / 256.0)).astype(np.float32)  # uint8 value -> OD
_MAX_DENSITY = float(np.log(256.0))  # OD of a 0 pixel


def hed_jitter(image: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Scale and shift an RGB uint8 image's H, E and DAB stain densities (3 values each), vectorised.

    Deconvolution, jitter and reconvolution are linear in optical density, so they fold into one affine
    colour transform, od' = od @ (HED_FROM_RGB diag(scale) RGB_FROM_HED) + shift @ RGB_FROM_HED, which
    OpenCV applies to every pixel in one call.
    """
    matrix = HED_FROM_RGB @ np.diag(scale) @ RGB_FROM_HED
    offset = np.asarray(shift) @ RGB_FROM_HED
    affine = np.hstack([matrix.T, offset[:, None]]).astype(np.float32)  # cv2.transform: dst = M @ [src; 1]
    density = cv2.transform(_OPTICAL_DENSITY[image], affine)
    np.clip(density, 0.0, _MAX_DENSITY, out=density)  # keeps 256 * exp(-od) - 1 within [0, 255]
    return cv2.convertScaleAbs(cv2.exp(-density), alpha=256.0, beta=-1.0)  # rounds to uint8


class HEDJitter(A.ImageOnlyTransform):
    """Stain augmentation (Tellez et al. 2018): per image, H/E/DAB densities times U(1-s, 1+s) plus U(-b, b)."""

    class InitSchema(BaseTransformInitSchema):
        scale_limit: float = Field(ge=0, lt=1)
        shift_limit: float = Field(ge=0, le=1)

    def __init__(self, scale_limit: float = 0.3, shift_limit: float = 0.05, p: float = 0.5):
        super().__init__(p=p)
        self.scale_limit = scale_limit
        self.shift_limit = shift_limit

    def get_params(self) -> dict[str, np.ndarray]:
        """Draw the per-stain scale and shift."""
        rng = self.random_generator
        return {
            "scale": rng.uniform(1 - self.scale_limit, 1 + self.scale_limit, 3),
            "shift": rng.uniform(-self.shift_limit, self.shift_limit, 3),
        }

    def apply(self, img: np.ndarray, scale: np.ndarray, shift: np.ndarray, **params: Any) -> np.ndarray:
        """Jitter the stains of a uint8 RGB image."""
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
            raise TypeError(f"HEDJitter needs an (h, w, 3) uint8 RGB image, got {img.dtype} {img.shape}")
        return hed_jitter(img, scale, shift)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Arguments that serialisation (A.to_dict) records."""
        return ("scale_limit", "shift_limit")


def piecewise_affine_maps(
    shape: tuple[int, int], grid: tuple[int, int], scale: float, absolute_scale: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """albumentations 2.0.8's piecewise-affine remap maps (inverse-distance weighting of jittered grid points), vectorised.

    Same random draws and the same maps as albumentations.augmentations.geometric.functional
    .create_piecewise_affine_maps, whose per-pixel Python loop takes ~18 s on a 768 px tile.
    """
    height, width = shape
    nb_rows, nb_cols = grid
    xx, yy = np.meshgrid(
        np.linspace(0, width - 1, nb_cols, dtype=np.float32), np.linspace(0, height - 1, nb_rows, dtype=np.float32)
    )
    jitter_scale = scale / 3 if absolute_scale else scale * min(width, height) / 3
    jitter = rng.normal(0, jitter_scale, (nb_rows, nb_cols, 2)).astype(np.float32)
    src_x, src_y = xx.ravel(), yy.ravel()
    dst = np.stack(
        [np.clip(xx + jitter[..., 1], 0, width - 1).ravel(), np.clip(yy + jitter[..., 0], 0, height - 1).ravel()], 1
    )
    maps = np.empty((height, width, 2), dtype=np.float32)
    cols = np.arange(width, dtype=np.float32)[None, :, None] - src_x
    for r0 in range(0, height, 64):  # 64 rows at a time bounds the (rows, width, points) weight array
        rows = np.arange(r0, min(r0 + 64, height), dtype=np.float32)[:, None, None] - src_y
        weights = 1 / (cols * cols + rows * rows + np.float32(1e-8))
        weights /= weights.sum(-1, keepdims=True)
        maps[r0 : r0 + len(rows)] = weights @ dst
    np.clip(maps[..., 0], 0, width - 1, out=maps[..., 0])
    np.clip(maps[..., 1], 0, height - 1, out=maps[..., 1])
    return maps[..., 0].copy(), maps[..., 1].copy()


class FastPiecewiseAffine(A.PiecewiseAffine):
    """albumentations' PiecewiseAffine (same arguments, draws and output) with vectorised maps."""

    def __init__(self, **kwargs: Any):
        with warnings.catch_warnings():  # its "very slow" warning is about the loop replaced here
            warnings.filterwarnings("ignore", message="This augmenter is very slow", category=UserWarning)
            super().__init__(**kwargs)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Draw the grid and jitter as the parent does, then build the maps vectorised."""
        nb_rows = np.clip(self.py_random.randint(*self.nb_rows), 2, None)
        nb_cols = np.clip(self.py_random.randint(*self.nb_cols), 2, None)
        scale = self.py_random.uniform(*self.scale)
        map_x, map_y = piecewise_affine_maps(
            params["shape"][:2], (nb_rows, nb_cols), scale, self.absolute_scale, self.random_generator
        )
        return {"map_x": map_x, "map_y": map_y}


def _flips() -> list[A.BasicTransform]:
    return [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]


def _seed10() -> list[A.BasicTransform]:
    reflect = cv2.BORDER_REFLECT_101  # reflected tissue instead of black corners, for images and masks alike
    return [
        *_flips(),
        # ShiftScaleRotate(0.0625, 0.1, 45) of albumentations 1.x, in Affine's terms.
        A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.9, 1.1), rotate=(-45, 45), border_mode=reflect, p=0.5),
        A.OneOf(
            [
                A.GaussNoise(std_range=(0.012, 0.028), p=1.0),  # 1.x var_limit=(10, 50): std sqrt(var) / 255
                A.GaussianBlur(blur_limit=(3, 7), sigma_limit=(0.5, 1.5), p=1.0),
            ],
            p=0.3,
        ),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10, p=0.5),
        A.OneOf(
            [
                A.OpticalDistortion(distort_limit=0.1, border_mode=reflect, p=1.0),
                A.GridDistortion(num_steps=5, distort_limit=0.3, border_mode=reflect, p=1.0),
                FastPiecewiseAffine(scale=(0.02, 0.04), nb_rows=4, nb_cols=4, border_mode=reflect, p=1.0),
            ],
            p=0.3,
        ),
    ]


def train_transforms(preset: str, seed: int | None = None) -> A.Compose:
    """The training pipeline of a named preset (see PRESETS); seed makes it reproducible."""
    if preset == "flips":
        transforms = _flips()
    elif preset == "seed10":
        transforms = _seed10()
    elif preset == "seed10+stain":
        transforms = [*_seed10(), HEDJitter(scale_limit=0.3, shift_limit=0.05, p=0.5)]
    else:
        raise ValueError(f"unknown augmentation preset {preset!r}; expected one of {PRESETS}")
    return A.Compose(transforms, seed=seed)


def valid_transforms() -> A.Compose:
    """The validation pipeline: tiles are used as they are (no normalisation here either)."""
    return A.Compose([])
