"""The physical-scale contract: pixel-size mode by default, organ fallbacks, fractional factors, the side cap."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from checkpoints import ConstantNet

from inference import predict
from inference.checkpoint import CheckpointConfig
from inference.engine.ensemble import Member
from inference.engine.predictor import DEFAULT_MAX_SIDE, Predictor
from inference.organs import image_pixel_size
from inference.tiling import resize_probs


def predictor(tile: int = 32, **config) -> Predictor:
    cfg = CheckpointConfig(name="c", fold=0, framework="torchscript", task="binary", classes=["ftu"],
                           tile_size=tile, weights="model.ts", **config)
    return Predictor(cfg, ConstantNet([3.0]))


def test_cli_default_is_pixel_size_and_equals_options() -> None:
    args = predict.build_parser().parse_args(["--data-dir", "d", "--models", "m"])
    assert predict.options_from_args(args) == predict.Options()
    assert predict.Options().scale_mode == "pixel-size" and predict.Options().max_side == DEFAULT_MAX_SIDE


def test_160_px_prostate_is_upscaled_to_the_training_scale() -> None:
    scale = predictor(tile=768, pixel_size=0.4).scale(160, 160, "pixel-size", 6.263, DEFAULT_MAX_SIDE)
    assert scale.size == (2505, 2505) and not scale.capped and scale.rule == "pixel-size"


def test_4500_px_prostate_is_capped() -> None:
    scale = predictor(tile=768, pixel_size=0.4).scale(4500, 4500, "pixel-size", 6.263, DEFAULT_MAX_SIDE)
    assert scale.size == (DEFAULT_MAX_SIDE, DEFAULT_MAX_SIDE) and scale.capped
    wide = predictor(tile=768, pixel_size=0.4).scale(4500, 1500, "pixel-size", 6.263, DEFAULT_MAX_SIDE)
    assert wide.size == (DEFAULT_MAX_SIDE, DEFAULT_MAX_SIDE // 3)  # aspect kept


def test_2305_px_image_has_no_2x_jump() -> None:
    p = predictor(tile=768, pixel_size=0.52)
    small, large = p.working_size(2304, 2304, "pixel-size", 0.4), p.working_size(2305, 2305, "pixel-size", 0.4)
    assert large[0] - small[0] <= 1 and large[0] == round(2305 * 0.4 / 0.52)
    # the reduce rule halves here: the reason it is no longer the default
    assert predictor(tile=768, reduce_k=3.0).working_size(2305, 2305) == (1152, 1152)


@pytest.mark.parametrize("bad", [None, float("nan"), 0.0, -1.0, 1000.0, 0.001])
def test_unusable_pixel_size_falls_back_to_the_organ(bad: float | None) -> None:
    assert image_pixel_size(bad, "prostate", "Hubmap")[0] == 6.263
    assert image_pixel_size(bad, "prostate", "HPA")[0] == 0.4
    value, note = image_pixel_size(bad, "lung", "GTEx")  # unknown source: the private leaderboard's (Hubmap)
    assert value == 0.7562 and "GTEx" in note and "pixel_size" in note
    assert image_pixel_size(0.5, "liver", "GTEx") == (0.5, "")  # a usable value is used whatever the organ


def test_unknown_organ_without_pixel_size_is_not_rescaled() -> None:
    value, note = image_pixel_size(float("nan"), "liver", "Hubmap")
    assert value is None and "liver" in note
    assert predictor(pixel_size=0.4).working_size(300, 200, "pixel-size", value) == (300, 200)


def test_checkpoint_without_pixel_size_uses_the_reduce_rule() -> None:
    scale = predictor(tile=32).scale(100, 100, "pixel-size", 6.263)
    assert scale.rule == "reduce" and scale.size == (25, 25)


def _record_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    sizes: list[tuple[int, int]] = []
    original = Predictor.predict_working

    def spy(self: Predictor, image: np.ndarray, size: tuple[int, int], *args: object) -> np.ndarray:
        sizes.append(size)
        return original(self, image, size, *args)

    monkeypatch.setattr(Predictor, "predict_working", spy)
    return sizes


def test_predict_one_nan_pixel_size_uses_the_organ_value_and_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sizes = _record_sizes(monkeypatch)
    member = Member(predictor(tile=32, pixel_size=2.0))
    image = np.zeros((40, 40, 3), np.uint8)
    with caplog.at_level(logging.WARNING):
        rle, decision = predict.predict_one(image, "prostate", float("nan"), [member], predict.Options(),
                                            data_source="Hubmap", image_id=77)
    assert sizes == [(round(40 * 6.263 / 2.0),) * 2]
    assert rle and decision.mask.shape == (40, 40) and decision.mask.all()
    assert any("id 77:" in r.getMessage() and "6.263" in r.getMessage() for r in caplog.records)


def test_predict_one_cap_warns_naming_the_image(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    sizes = _record_sizes(monkeypatch)
    member = Member(predictor(tile=32, pixel_size=0.4))
    with caplog.at_level(logging.WARNING):
        _, decision = predict.predict_one(np.zeros((30, 20, 3), np.uint8), "prostate", 6.263, [member],
                                          predict.Options(max_side=96), image_id="big1")
    assert decision.capped and sizes == [(96, 64)] and decision.probability.shape == (30, 20)
    assert any("id big1:" in r.getMessage() and "--max-side 96" in r.getMessage() for r in caplog.records)


def test_probabilities_are_area_downscaled_without_aliasing() -> None:
    checker = (np.indices((64, 64)).sum(0) % 2).astype(np.float32)[None]
    down = resize_probs(checker, 25, 25)
    assert np.allclose(down, 0.5, atol=0.03)  # bilinear samples the grid: values from 0.04 to 0.96 here
    up = resize_probs(np.array([[[0.0, 1.0]]], np.float32), 1, 4)
    assert up.shape == (1, 1, 4) and math.isclose(float(up.min()), 0.0) and math.isclose(float(up.max()), 1.0)
