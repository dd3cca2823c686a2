"""What the network sees: grey and hematoxylin input, the same in training crops and in the Predictor."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from checkpoints import make_smp_checkpoint

from inference.checkpoint import CheckpointConfig
from inference.engine.predictor import load_predictor
from inference.input_modes import RGB_FROM_HED, project, project_image


def _stained(concentration: float, stain: int, size: int = 4) -> np.ndarray:
    """A uint8 image of one Ruifrok stain (0 H, 1 E, 2 DAB) at one optical-density concentration."""
    density = concentration * RGB_FROM_HED[stain]
    pixel = np.clip(256.0 * np.exp(-density) - 1.0, 0, 255).round().astype(np.uint8)
    return np.broadcast_to(pixel, (size, size, 3)).copy()


def test_grey_is_luminance_in_every_channel() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    grey = project_image(image, "grey")
    expected = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    assert grey.shape == image.shape and grey.dtype == np.uint8
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 0], grey[..., 2])
    assert np.abs(grey[..., 0].astype(int) - expected).max() <= 1


def test_hematoxylin_keeps_nuclei_and_drops_dab_and_eosin() -> None:
    nuclei, dab, eosin = _stained(0.8, 0), _stained(0.8, 2), _stained(0.8, 1)
    assert np.abs(project_image(nuclei, "hematoxylin").astype(int) - nuclei).max() <= 2  # as it was
    for other in (dab, eosin):
        assert project_image(other, "hematoxylin").min() >= 250  # white: no hematoxylin there
    mixed = np.minimum(nuclei, dab)  # darker than either
    out = project_image(mixed, "hematoxylin")
    assert out.mean() < 250 and np.abs(out.astype(int) - nuclei).max() < 80


def test_rgb_is_the_image_and_unknown_modes_are_refused() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    assert project_image(image, "rgb") is image
    with pytest.raises(ValueError, match="input_mode"):
        project_image(image, "hsv")
    with pytest.raises(ValueError, match="input_mode"):
        CheckpointConfig(name="x", fold=0, framework="smp", task="binary", classes=["ftu"], tile_size=64,
                         input_mode="hsv")


def test_context_views_are_projected_each() -> None:
    rng = np.random.default_rng(1)
    views = torch.from_numpy(rng.integers(0, 256, (2, 6, 8, 8)).astype(np.float32))
    both = project(views, "hematoxylin")
    assert torch.allclose(both[:, 3:], project(views[:, 3:], "hematoxylin"))


def test_predictor_shows_the_model_what_it_trained_on(tmp_path: Path) -> None:
    """A grey-mode checkpoint on a colour image predicts what the rgb-mode one predicts on the grey image."""
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (1, 3, 64, 64), dtype=np.uint8)
    colour = make_smp_checkpoint(tmp_path / "rgb" / "fold0", tile=64)
    grey = make_smp_checkpoint(tmp_path / "grey" / "fold0", tile=64, input_mode="grey")
    batch = torch.from_numpy(image)
    shown = torch.from_numpy(project_image(image[0].transpose(1, 2, 0), "grey").transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        on_grey = load_predictor(grey)._forward(batch)
        expected = load_predictor(colour)._forward(shown)
        as_is = load_predictor(colour)._forward(batch)
    assert torch.allclose(on_grey, expected, atol=1e-3)
    assert not torch.allclose(on_grey, as_is, atol=1e-3)
