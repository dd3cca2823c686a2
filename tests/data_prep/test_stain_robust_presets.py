"""The real-tissue presets: strong colour augmentation (1st place) and Fourier domain adaptation to targets."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from data_prep.augment import TargetFDA, train_transforms


def _tissue(seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(60, 230, (size, size, 3), dtype=np.uint8), (5, 5), 0)


def test_colour_preset_changes_colours_not_masks() -> None:
    compose = train_transforms("flips+colour", seed=0)
    image, mask = _tissue(0), np.zeros((64, 64), np.uint8)
    mask[10:30, 5:25] = 1
    means = []
    for _ in range(40):
        out = compose(image=image, mask=mask)
        assert out["mask"].sum() == mask.sum()  # flips move the mask, colour never touches it
        means.append(out["image"].reshape(-1, 3).mean(0))
    spread = np.std(means, axis=0)
    assert (spread > 5).all()  # hue / value / gamma move every channel's mean over 40 draws


def test_fda_takes_the_target_low_frequencies(tmp_path: Path) -> None:
    source, target = _tissue(1), np.full((80, 80, 3), (200, 120, 210), np.uint8)  # PAS-like magenta
    fda = TargetFDA([target], beta_limit=(0.05, 0.05), p=1.0)
    out = fda(image=source)["image"]
    before = np.abs(source.reshape(-1, 3).mean(0) - target[0, 0]).sum()
    after = np.abs(out.reshape(-1, 3).mean(0) - target[0, 0]).sum()
    assert out.shape == source.shape and out.dtype == np.uint8
    assert after < 0.5 * before  # the mean colour (the zero frequency) moves to the target's


def test_fda_preset_reads_targets_and_refuses_none(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "t.png"), np.full((40, 40, 3), 128, np.uint8))
    compose = train_transforms("flips+fda", seed=0, histmatch_targets=[tmp_path])
    assert any(isinstance(t, TargetFDA) for t in compose.transforms)
    compose(image=_tissue(2), mask=np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="reference images"):
        train_transforms("flips+fda")
