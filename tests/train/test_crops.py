"""The crop sampler: organ balance, per-FTU centring (small FTUs as likely as large), scale jitter, padding,
and independent draws across DataLoader workers and epochs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from train.crops import CropSampler, CropSettings, ScaledImage, crop_reflect, ftu_points
from train.fastai_data import CropDataset


def _image(organ: str, mask: np.ndarray, seed: int = 0) -> ScaledImage:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*mask.shape, 3), dtype=np.uint8)
    return ScaledImage(f"{organ}{seed}", organ, image, mask, ftu_points(mask, rng))


def _big_and_tiny() -> np.ndarray:
    """A 400 px mask with one large FTU (top-left) and one 4x4 px FTU (bottom-right)."""
    mask = np.zeros((400, 400), np.uint8)
    mask[20:180, 20:180] = 1
    mask[360:364, 360:364] = 1
    return mask


def test_ftu_points_one_array_per_component_inside_it() -> None:
    mask = _big_and_tiny()
    points = ftu_points(mask, np.random.default_rng(0), per_ftu=16)
    assert sorted(len(p) for p in points) == [16, 16]
    for p in points:
        assert mask[p[:, 0], p[:, 1]].all()
    assert ftu_points(np.zeros((10, 10), np.uint8), np.random.default_rng(0)) == []


def test_small_ftus_are_centred_as_often_as_large_ones() -> None:
    sampler = CropSampler([_image("kidney", _big_and_tiny())], CropSettings(size=64, ftu_share=1.0))
    rng = np.random.default_rng(1)
    masks = [sampler.sample(rng)[1] for _ in range(400)]
    tiny = sum(0 < int(mask.sum()) <= 16 for mask in masks)  # only the 4x4 FTU in view: it was the one picked
    assert tiny > 0.35 * 400  # uniform over FTU pixels would centre the 16 px FTU in < 1% of crops


def test_every_ftu_centred_crop_holds_ftu_pixels() -> None:
    sampler = CropSampler([_image("kidney", _big_and_tiny())], CropSettings(size=64, ftu_share=1.0,
                                                                             scale_range=(0.5, 2.0)))
    rng = np.random.default_rng(2)
    crops = [sampler.sample(rng) for _ in range(200)]
    assert all(crop.mask.any() for crop in crops)
    assert all(crop.image.shape == (64, 64, 3) and crop.mask.shape == (64, 64) for crop in crops)
    assert all(crop.context is None for crop in crops)
    assert set(np.unique(np.concatenate([crop.mask.ravel() for crop in crops]))) == {0, 1}


def test_context_view_covers_k_times_the_field_around_the_same_centre() -> None:
    ys, xs = np.indices((400, 400))
    image = np.stack([ys * 255 // 399, xs * 255 // 399, np.zeros_like(ys)], -1).astype(np.uint8)  # a coordinate ramp
    item = ScaledImage("x", "kidney", image, _big_and_tiny(), ftu_points(_big_and_tiny(), np.random.default_rng(0)))
    sampler = CropSampler([item], CropSettings(size=32, ftu_share=1.0, context=3))
    for crop in (sampler.sample(np.random.default_rng(seed)) for seed in range(20)):
        assert crop.context.shape == crop.image.shape
        centre = crop.context[11:21, 11:21].astype(float).mean((0, 1))  # the crop sits in the view's central third
        assert np.allclose(centre[:2], crop.image.astype(float).mean((0, 1))[:2], atol=12)
        spread = np.ptp(crop.context[..., 1].astype(float)), np.ptp(crop.image[..., 1].astype(float))
        assert spread[0] > 2 * spread[1] or spread[0] > 200  # 3x the field: 3x the ramp (unless reflected)


def test_organ_balance_draws_organs_not_images() -> None:
    mask = _big_and_tiny()
    images = [_image("kidney", mask)] + [_image("lung", mask, seed) for seed in range(1, 10)]
    rng = np.random.default_rng(3)
    balanced = CropSampler(images, CropSettings(size=32))
    share = np.mean([balanced.pick_image(rng).organ == "kidney" for _ in range(2000)])
    assert share == pytest.approx(0.5, abs=0.05)
    plain = CropSampler(images, CropSettings(size=32, organ_balance=False))
    assert np.mean([plain.pick_image(rng).organ == "kidney" for _ in range(2000)]) == pytest.approx(0.1, abs=0.03)


def test_crop_reflect_pads_like_the_predictor() -> None:
    array = np.arange(5 * 7, dtype=np.uint8).reshape(5, 7)
    padded = np.pad(array, 20, mode="symmetric")  # inference.engine.sliding pads by symmetric reflection
    for y0, x0 in [(-3, -4), (2, 3), (-8, 1), (1, 5), (-2, -6), (-20, -20), (0, 0)]:
        assert np.array_equal(crop_reflect(array, y0, x0, 9), padded[y0 + 20 : y0 + 29, x0 + 20 : x0 + 29])


def test_lowres_blur_removes_fine_detail() -> None:
    checker = (np.indices((256, 256)).sum(0) % 2 * 255).astype(np.uint8)
    image = ScaledImage("x", "lung", np.repeat(checker[..., None], 3, 2), checker > 0, [])
    sharp = CropSampler([image], CropSettings(size=64, ftu_share=0.0)).sample(np.random.default_rng(0))[0]
    blurred = CropSampler([image], CropSettings(size=64, ftu_share=0.0, lowres_prob=1.0, lowres_range=(4, 4)))
    assert blurred.sample(np.random.default_rng(0))[0].std() < 0.2 * max(sharp.std(), 1.0) + 5


def test_crop_dataset_draws_differ_across_workers_and_epochs() -> None:
    sampler = CropSampler([_image("kidney", _big_and_tiny())], CropSettings(size=32, scale_range=(0.8, 1.25)))
    dataset = CropDataset(sampler, n=8, augment="flips")
    loader = DataLoader(dataset, batch_size=2, num_workers=2, generator=torch.Generator().manual_seed(0))
    draws = [tuple(x.flatten()[:64].tolist()) for _ in range(2) for batch, _ in loader for x in batch]
    assert len(draws) == 16 and len(set(draws)) == 16


def test_stain_copy_share_is_honoured_and_zero_keeps_todays_draws() -> None:
    mask = _big_and_tiny()
    plain = _image("kidney", mask)
    copied = _image("kidney", mask)
    copied.copies = [np.full_like(copied.image, 7), np.full_like(copied.image, 9)]
    settings = CropSettings(size=32, scale_range=(0.8, 1.25))
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(20):  # share 0: not even a draw, so the stream and the crops are today's
        a, b = CropSampler([plain], settings).sample(rng_a), CropSampler([copied], settings).sample(rng_b)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    sampler = CropSampler([copied], CropSettings(size=32, scale_range=(0.8, 1.25), stain_copy_share=0.3))
    rng = np.random.default_rng(0)
    crops = [sampler.sample(rng) for _ in range(2000)]
    from_copy = [int(c.image.max()) in (7, 9) and int(c.image.min()) == int(c.image.max()) for c in crops]
    assert abs(np.mean(from_copy) - 0.3) < 0.04
    values = {int(c.image[0, 0, 0]) for c, f in zip(crops, from_copy, strict=True) if f}
    assert values == {7, 9}  # both copies are drawn
    with pytest.raises(ValueError, match="stain_copy_share"):
        CropSettings(size=32, stain_copy_share=1.5)


def test_ignored_pixels_are_never_ftu_centres() -> None:
    mask = np.zeros((200, 200), np.uint8)
    mask[10:30, 10:30] = 1
    mask[100:190, 100:190] = 255  # an ignore band (pseudo-labels), larger than the FTU
    points = ftu_points(mask, np.random.default_rng(0))
    assert len(points) == 1 and (mask[points[0][:, 0], points[0][:, 1]] == 1).all()
