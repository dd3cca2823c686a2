"""The fastai training pipeline's sample distribution, pinned so that a faster implementation must draw the same:
normalisation and targets equal to their float formulas, the stain transfer equal to its one-transform formula, the
crop sampler's shares (organ, FTU centring, stain
copies, low-res blur, scale), the `seed10+stain` preset's per-transform rates, and the colour and FTU statistics of
whole training samples over many seeded draws. Tolerances are 4 standard errors of the estimate (binomial shares)
or stated beside the pinned value. benchmarks/data_pipeline.py measures the speed."""

from __future__ import annotations

import math
import random
from collections import Counter

import cv2
import numpy as np
import pytest
import torch

from data_prep.augment import (
    _MAX_DENSITY,
    HED_FROM_RGB,
    RGB_FROM_HED,
    TISSUE_OD,
    StainTransfer,
    optical_density,
    reseed,
    stain_transfer,
    train_transforms,
)
from inference.engine.sliding import reflect_indices
from train.crops import CropSampler, CropSettings, ScaledImage, crop_reflect, ftu_points
from train.fastai_data import MEAN, STD, CropDataset, normalise


def _within(share: float, expected: float, n: int) -> bool:
    """A binomial share within 4 standard errors of its expected value."""
    return abs(share - expected) <= 4 * math.sqrt(expected * (1 - expected) / n) + 1e-9


def test_normalise_and_target_equal_their_float_formulas() -> None:
    rng = np.random.default_rng(0)
    for shape in [(37, 53, 3), (2, 16, 24, 3)]:
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        formula = np.ascontiguousarray(np.moveaxis((images.astype(np.float32) / 255.0 - MEAN) / STD, -1, -3))
        out = normalise(images)
        assert out.dtype == np.float32 and out.flags.c_contiguous and np.array_equal(out, formula)
    assert np.array_equal(normalise(np.ascontiguousarray(images[0, ::-1])), formula[0][:, ::-1])  # strided input
    with pytest.raises(TypeError, match="uint8"):
        normalise(images.astype(np.float32))


def test_crop_reflect_equals_the_index_reflection() -> None:
    """The copyMakeBorder path and the index path give the predictor's reflection (reflect_indices) everywhere."""
    rng = np.random.default_rng(0)
    for h, w in [(200, 300), (40, 7), (1, 5), (2, 2)]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mask = rng.integers(0, 6, (h, w), dtype=np.uint8)
        for _ in range(80):
            side = int(rng.integers(2, 320))
            y0, x0 = int(rng.integers(-side, h + 1)), int(rng.integers(-side, w + 1))
            rows = reflect_indices(h, side, side)[y0 + side : y0 + 2 * side]
            cols = reflect_indices(w, side, side)[x0 + side : x0 + 2 * side]
            for array in (image, mask):
                assert np.array_equal(crop_reflect(array, y0, x0, side), array[np.ix_(rows, cols)])


def _stain_transfer_formula(image: np.ndarray, stain_matrix: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The stain transfer as first written: the tissue weight merged as a fourth OD channel, one cv2.transform."""
    od = optical_density(image)
    matrix = (HED_FROM_RGB @ np.asarray(stain_matrix)).T.astype(np.float32)
    background = np.asarray(background, np.float32)
    if background.any():
        low, high = TISSUE_OD
        ramp = np.array([[1, 1, 1, -low]], np.float32) / (high - low)
        tissue = np.clip(cv2.transform(od, ramp), 0.0, 1.0)
        od = cv2.merge([od, tissue])
        matrix = np.hstack([matrix, background[:, None]])
    density = np.clip(cv2.transform(od, matrix), 0.0, _MAX_DENSITY)
    return cv2.convertScaleAbs(cv2.exp(-density), alpha=256.0, beta=-1.0)


def test_stain_transfer_equals_its_one_transform_formula() -> None:
    """The plane-by-plane stain transfer gives the same bits as the 4-channel cv2.transform (flips+stain, seed10+stain
    and hubmap draw it): StainTransfer's own draws, the identity, odd sizes, black and white."""
    rng = np.random.default_rng(0)
    transform = StainTransfer(p=1.0)
    transform.set_random_state(np.random.default_rng(1), random.Random(1))
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(96, 80, 3), (7, 1, 3), (1, 1, 3), (3, 5, 3)]]
    images += [np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8), _scene("kidney", 0).image]
    for image in images:
        for _ in range(25):
            params = transform.get_params()
            matrix, background = params["stain_matrix"], params["background_od"]
            assert np.array_equal(stain_transfer(image, matrix, background),
                                  _stain_transfer_formula(image, matrix, background))
        assert np.array_equal(stain_transfer(image, RGB_FROM_HED, np.zeros(3)), image)


def _scene(organ: str, seed: int) -> ScaledImage:
    """A 240 px tissue-like image with a checkerboard (blur shows), two small and one large FTU, one stain copy whose
    blue channel is 0 (crops cut from it show)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.indices((240, 240))
    board = ((ys // 2 + xs // 2) % 2 * 120 + 60).astype(np.uint8)
    image = np.stack([board, 255 - board, np.full_like(board, 200)], -1)
    mask = np.zeros((240, 240), np.uint8)
    mask[30:34, 30:34] = mask[200:204, 40:44] = 1
    mask[120:200, 120:200] = 2
    copy = image.copy()
    copy[..., 2] = 0
    return ScaledImage(f"{organ}{seed}", organ, image, mask, ftu_points(mask, rng), copies=[copy])


SETTINGS = CropSettings(size=32, ftu_share=0.5, scale_range=(0.8, 1.25), lowres_prob=0.1, stain_copy_share=0.3)


def test_crop_sampler_shares() -> None:
    images = [_scene("kidney", 0), _scene("kidney", 1), _scene("kidney", 2), _scene("spleen", 3)]
    n = 3000
    rng = np.random.default_rng(0)
    picked = Counter()
    crops = []
    sampler = CropSampler(images, SETTINGS)
    for _ in range(n):
        item = sampler.pick_image(rng)
        picked[item.organ] += 1
        crops.append(sampler.crop(item, rng))
    assert _within(picked["spleen"] / n, 0.5, n)  # organs drawn uniformly, not images (1 spleen of 4 images)
    from_copy = np.mean([c.image[..., 2].max() < 100 for c in crops])
    assert _within(from_copy, SETTINGS.stain_copy_share, n)
    # blurred through a lower resolution: the 2 px checkerboard is gone (its pixel-to-pixel contrast halves)
    contrast = np.array([np.abs(np.diff(c.image[..., 0].astype(int), axis=1)).mean() for c in crops])
    assert _within(float(np.mean(contrast < 30)), SETTINGS.lowres_prob, n)
    # FTU centring: P(FTU in view) = share + (1 - share) * P(FTU in view of a uniform crop)
    uniform = CropSampler(images, CropSettings(size=32, ftu_share=0.0, scale_range=(0.8, 1.25)))
    rng = np.random.default_rng(1)
    q = np.mean([uniform.sample(rng).mask.any() for _ in range(n)])
    assert abs(np.mean([c.mask.any() for c in crops]) - (0.5 + 0.5 * q)) < 4 * math.sqrt(0.25 / n) * 2
    # each of the 3 FTUs centred equally often: the small ones alone in view in about a third of centred crops each
    centred = CropSampler(images, CropSettings(size=32, ftu_share=1.0, scale_range=(1.0, 1.0)))
    rng = np.random.default_rng(2)
    small = np.mean([0 < int((centred.sample(rng).mask == 1).sum()) <= 16 for _ in range(n)])
    assert _within(small, 2 / 3, n)


def test_crop_side_is_log_uniform_in_the_scale_range() -> None:
    """A crop covers size * s pixels, s log-uniform in scale_range: a disc of area A shows as A / s^2 in the mask."""
    mask = np.zeros((400, 400), np.uint8)
    radius = 16
    ys, xs = np.indices(mask.shape)
    mask[(ys - 200) ** 2 + (xs - 200) ** 2 <= radius**2] = 1
    item = ScaledImage("x", "kidney", np.zeros((400, 400, 3), np.uint8), mask, ftu_points(mask, np.random.default_rng(0)))
    sampler = CropSampler([item], CropSettings(size=128, ftu_share=1.0, scale_range=(0.8, 1.25)))
    rng = np.random.default_rng(0)
    area = float(mask.sum())
    logs = np.array([-0.5 * np.log(sampler.sample(rng).mask.sum() / area) for _ in range(2000)])
    lo, hi = np.log(0.8), np.log(1.25)
    assert abs(logs.mean() - (lo + hi) / 2) < 0.01  # 4 standard errors of 2000 draws: 0.012
    assert abs(logs.std() - (hi - lo) / math.sqrt(12)) < 0.01
    assert logs.min() > lo - 0.03 and logs.max() < hi + 0.03


# seed10+stain: each transform's probability of being applied (OneOf groups: p 0.3 spread over their members)
SEED10_STAIN_RATES = {
    "HorizontalFlip": 0.5, "VerticalFlip": 0.5, "OpenCVRandomRotate90": 0.5, "Affine": 0.5, "GaussNoise": 0.15,
    "GaussianBlur": 0.15, "RandomBrightnessContrast": 0.5, "HueSaturationValue": 0.5, "OpticalDistortion": 0.1,
    "GridDistortion": 0.1, "BoundedPiecewiseAffine": 0.1, "StainTransfer": 0.5, "HEDJitter": 0.5,
}  # fmt: skip


def test_seed10_stain_applies_each_transform_at_its_rate() -> None:
    compose = train_transforms("seed10+stain")
    compose = type(compose)(compose.transforms, save_applied_params=True)
    reseed(compose, 0)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    n = 1500
    counts = Counter()
    for _ in range(n):
        applied = compose(image=image, mask=mask)["applied_transforms"]
        counts.update({name for name, _ in applied})
    assert set(counts) <= set(SEED10_STAIN_RATES), counts
    for name, rate in SEED10_STAIN_RATES.items():
        assert _within(counts[name] / n, rate, n), (name, counts[name] / n, rate)


# Whole training samples (crop sampler + seed10+stain + normalisation + target) over PINNED_N seeded draws: the mean
# FTU share of the targets and the mean and standard deviation of each normalised channel. Pinned from the
# implementation of this commit; each tolerance is 4 standard errors over the draws (measured beside the value).
PINNED_N = 400


def test_training_samples_keep_their_colour_and_ftu_statistics() -> None:
    images = [_scene("kidney", 0), _scene("spleen", 3)]
    dataset = CropDataset(CropSampler(images, SETTINGS), PINNED_N, "seed10+stain")
    torch.manual_seed(0)
    samples = [dataset[i] for i in range(PINNED_N)]
    x = torch.stack([s[0] for s in samples]).numpy()
    y = torch.stack([s[1] for s in samples]).numpy()
    assert set(np.unique(y)) <= {0.0, 1.0}
    ftu = y.mean(axis=(1, 2, 3))
    means, stds = x.mean(axis=(2, 3)), x.std(axis=(2, 3))  # per sample and channel
    stats = {"ftu": ftu, **{f"mean{c}": means[:, c] for c in range(3)}, **{f"std{c}": stds[:, c] for c in range(3)}}
    observed = {k: float(v.mean()) for k, v in stats.items()}
    tolerance = {k: 4 * float(v.std()) / math.sqrt(PINNED_N) for k, v in stats.items()}
    assert set(PINNED) == set(observed)
    for key, value in PINNED.items():
        assert abs(observed[key] - value) <= tolerance[key], (key, observed[key], value, tolerance[key])


PINNED: dict[str, float] = {  # 4 standard errors: ftu 0.069, means 0.18-0.27, stds 0.03-0.06
    "ftu": 0.1873, "mean0": 0.1904, "mean1": -0.0176, "mean2": 0.759, "std0": 0.3661, "std1": 0.2963, "std2": 0.1044,
}  # fmt: skip
