"""Sliding-window prediction: blending weights, padding, seamless accumulation, flip TTA, scale rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from checkpoints import ConstantNet

from inference.checkpoint import CheckpointConfig
from inference.engine.predictor import Predictor
from inference.engine.sliding import (
    blend_weights,
    dihedral,
    inverse_dihedral,
    pad_to_tile,
    reflect_indices,
    sliding_window,
    tta_forward,
)


def red_channel(batch: torch.Tensor) -> torch.Tensor:
    """A 'model' whose output is its input's first channel: any misplaced tile shows in the result."""
    return batch[:, :1].float() / 255.0


@pytest.mark.parametrize("mode", ["gaussian", "linear", "constant"])
def test_blend_weights_positive_and_peaked(mode: str) -> None:
    w = blend_weights(32, mode)
    assert w.shape == (32, 32) and w.dtype == torch.float32
    assert float(w.min()) >= 1e-3
    assert torch.allclose(w, w.flip(0)) and torch.allclose(w, w.T)
    if mode != "constant":
        assert float(w[15:17, 15:17].min()) > float(w[0, 0]) * 10


def test_gaussian_weights_match_monai() -> None:
    monai_utils = pytest.importorskip("monai.data.utils", reason="monai is only needed for this cross-check")
    ours = blend_weights(48, "gaussian", sigma_scale=0.125)
    theirs = monai_utils.compute_importance_map((48, 48), mode="gaussian", sigma_scale=0.125)
    assert torch.allclose(ours, theirs, atol=1e-7)


@pytest.mark.parametrize("mode", ["gaussian", "linear"])
@pytest.mark.parametrize("shape", [(100, 77), (64, 64), (130, 33)])
def test_constant_model_gives_constant_map(mode: str, shape: tuple[int, int]) -> None:
    image = torch.zeros((3, *shape), dtype=torch.uint8)
    out = sliding_window(image, lambda b: torch.full((b.shape[0], 2, 32, 32), 0.37), tile=32, stride=12,
                         out_channels=2, batch_size=3, weights=blend_weights(32, mode))
    assert out.shape == (2, *shape)
    assert float((out - 0.37).abs().max()) < 1e-6


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_tiles_land_where_they_came_from(stride: int) -> None:
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 255, (3, 90, 70), dtype=np.uint8))
    out = sliding_window(image, red_channel, tile=32, stride=stride, out_channels=1, batch_size=5)
    assert torch.allclose(out[0], image[0].float() / 255.0, atol=1e-6)


def test_reflect_indices_cover_pads_longer_than_the_axis() -> None:
    assert reflect_indices(3, 4, 5).tolist() == [2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0, 1]
    assert reflect_indices(1, 2, 2).tolist() == [0, 0, 0, 0, 0]


def test_tiny_image_is_padded_to_one_tile_never_tiled() -> None:
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.integers(0, 255, (3, 10, 7), dtype=np.uint8))
    padded, (top, left) = pad_to_tile(image, 32)
    assert padded.shape == (3, 32, 32)
    assert torch.equal(padded[:, top : top + 10, left : left + 7], image)
    calls = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch.shape[0])
        return red_channel(batch)

    out = sliding_window(image, forward, tile=32, stride=16, out_channels=1)
    assert calls == [1]
    assert torch.allclose(out[0], image[0].float() / 255.0)


def test_one_side_shorter_than_tile_pads_that_side_only() -> None:
    image = torch.zeros((3, 20, 100), dtype=torch.uint8)
    padded, (top, left) = pad_to_tile(image, 32)
    assert padded.shape == (3, 32, 100) and left == 0 and top == 6


@pytest.mark.parametrize("k", range(8))
def test_dihedral_inverse(k: int) -> None:
    x = torch.arange(2 * 3 * 4 * 4).view(2, 3, 4, 4)
    assert torch.equal(inverse_dihedral(dihedral(x, k), k), x)


def test_eight_dihedral_views_are_distinct() -> None:
    x = torch.arange(16).view(1, 1, 4, 4)
    assert len({tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}) == 8


@pytest.mark.parametrize("tta", [0, 2, 4, 8])
def test_tta_of_an_equivariant_model_is_the_model(tta: int) -> None:
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(tta_forward(lambda b: b[:, :1], x, tta), x[:, :1])


def test_tta_averages_views_of_a_position_dependent_model() -> None:
    ramp = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(1, 1, 16, 16)
    out = tta_forward(lambda b: ramp.expand(b.shape[0], -1, -1, -1), torch.zeros(1, 3, 16, 16), 2)
    assert torch.allclose(out, torch.full_like(out, 0.5))
    with pytest.raises(ValueError, match="tta"):
        tta_forward(lambda b: b, torch.zeros(1, 3, 4, 4), 3)


def constant_predictor(tile: int = 32, **config) -> Predictor:
    cfg = CheckpointConfig(name="c", fold=0, framework="torchscript", task="binary", classes=["ftu"],
                           tile_size=tile, weights="model.ts", **config)
    return Predictor(cfg, ConstantNet([0.0]))


def test_adaptive_reduce_rule() -> None:
    p = constant_predictor(tile=768)
    assert p.working_size(3000, 3000) == (750, 750)  # ceil(3000 / 768) = 4
    assert p.working_size(4500, 2000) == (750, 333)  # ceil(4500 / 768) = 6
    assert p.working_size(160, 160) == (160, 160)  # smaller than a tile: reduce 1, padded later
    assert constant_predictor(tile=768, reduce_k=2.0).working_size(3000, 3000) == (1500, 1500)


def test_fixed_reduce_overrides_adaptive_rule() -> None:
    assert constant_predictor(tile=768, reduce=3).working_size(3000, 1500) == (1000, 500)


def test_pixel_size_mode_rescales_to_training_scale() -> None:
    p = constant_predictor(tile=768, pixel_size=0.4)
    assert p.working_size(1000, 800, "pixel-size", pixel_size=0.5) == (1250, 1000)
    assert p.working_size(160, 160, "pixel-size", pixel_size=6.263) == (2505, 2505)
    assert p.working_size(1000, 800, "none") == (1000, 800)
    # a checkpoint without pixel_size falls back to the reduce rule (tests/test_scale.py covers the rest)
    assert constant_predictor(tile=32).working_size(100, 100, "pixel-size", pixel_size=0.4) == (25, 25)


def test_predictor_returns_full_resolution_probabilities() -> None:
    p = constant_predictor(tile=32)
    image = np.zeros((150, 97, 3), dtype=np.uint8)
    probs = p(image, tta=4)
    assert probs.shape == (1, 150, 97) and probs.dtype == np.float32
    assert np.allclose(probs, 0.5, atol=1e-6)  # sigmoid(0)
