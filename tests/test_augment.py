"""Augmentation presets: 2.x argument names (warnings are errors), shapes, dtypes, class-valued masks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from data_prep.augment import (
    PRESETS,
    FastPiecewiseAffine,
    HEDJitter,
    hed_jitter,
    piecewise_affine_maps,
    train_transforms,
    valid_transforms,
)

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (96, 96, 3), dtype=np.uint8)  # tiles are square: RandomRotate90 swaps h, w
MASK = np.zeros((96, 96), np.uint8)
MASK[20:50, 10:40] = 3
MASK[60:90, 50:75] = 5


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_builds_and_applies_without_warnings(preset: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # albumentations only warns about 1.x argument names, then ignores them
        transform = train_transforms(preset, seed=0)
        for _ in range(25):
            out = transform(image=IMAGE, mask=MASK)
            assert out["image"].shape == IMAGE.shape and out["image"].dtype == np.uint8
            assert out["mask"].shape == MASK.shape and out["mask"].dtype == np.uint8
            assert set(np.unique(out["mask"])) <= {0, 3, 5}


def test_presets_differ_and_seed10_applies_every_transform() -> None:
    names = {p: [type(t).__name__ for t in train_transforms(p)] for p in PRESETS}
    assert names["flips"] == ["HorizontalFlip", "VerticalFlip", "RandomRotate90"]
    seed10 = train_transforms("seed10")
    leaves = [type(t).__name__ for t in seed10 for t in getattr(t, "transforms", [t])]
    assert set(leaves) >= {
        "HorizontalFlip",
        "RandomRotate90",
        "Affine",
        "GaussNoise",
        "GaussianBlur",
        "RandomBrightnessContrast",
        "HueSaturationValue",
        "OpticalDistortion",
        "GridDistortion",
        "FastPiecewiseAffine",
    }
    assert names["seed10+stain"] == [*names["seed10"], "HEDJitter"]


def test_old_argument_names_would_fail() -> None:
    import albumentations as A

    with warnings.catch_warnings(), pytest.raises(UserWarning, match="var_limit"):
        warnings.simplefilter("error")
        A.GaussNoise(var_limit=(10, 50))


def test_unknown_preset_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="seed10\\+stain"):
        train_transforms("seed11")


def test_valid_transforms_are_identity() -> None:
    out = valid_transforms()(image=IMAGE, mask=MASK)
    np.testing.assert_array_equal(out["image"], IMAGE)
    np.testing.assert_array_equal(out["mask"], MASK)


def test_hed_jitter_identity_and_direction() -> None:
    np.testing.assert_array_equal(hed_jitter(IMAGE, np.ones(3), np.zeros(3)), IMAGE)
    tissue = np.full((8, 8, 3), (150, 90, 160), np.uint8)  # a purple (H&E-like) pixel block
    darker = hed_jitter(tissue, np.array([1.5, 1.0, 1.0]), np.zeros(3))  # more haematoxylin
    assert (darker.astype(int) <= tissue).all() and (darker.astype(int) < tissue).any()
    white = np.full((4, 4, 3), 255, np.uint8)
    np.testing.assert_array_equal(hed_jitter(white, np.array([1.3, 0.7, 1.2]), np.zeros(3)), white)


def test_hed_jitter_transform_is_seeded() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first, second = HEDJitter(p=1.0), HEDJitter(p=1.0)
    first.set_random_seed(3)
    second.set_random_seed(3)
    a, b = first(image=IMAGE)["image"], second(image=IMAGE)["image"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, IMAGE)


@pytest.mark.parametrize(
    ("shape", "grid", "scale", "absolute"), [((37, 53), (4, 5), 0.05, False), ((20, 24), (3, 3), 3.0, True)]
)
def test_piecewise_affine_maps_match_albumentations(shape, grid, scale, absolute) -> None:
    # Imported here, after data_prep.augment has switched off albumentations' online version check.
    from albumentations.augmentations.geometric.functional import create_piecewise_affine_maps

    ours = piecewise_affine_maps(shape, grid, scale, absolute, np.random.default_rng(1))
    theirs = create_piecewise_affine_maps(shape, grid, scale, absolute, np.random.default_rng(1))
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3)


def test_fast_piecewise_affine_keeps_mask_classes() -> None:
    transform = FastPiecewiseAffine(scale=(0.03, 0.05), p=1.0)
    out = transform(image=IMAGE, mask=MASK)
    assert set(np.unique(out["mask"])) <= {0, 3, 5} and not np.array_equal(out["image"], IMAGE)
