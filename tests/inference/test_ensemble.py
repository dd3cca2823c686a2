"""Ensembling decisions: majority class, mean and union modes, thresholds, weights, post-processing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from checkpoints import ColourNet, ConstantNet

from inference.checkpoint import CheckpointConfig
from inference.engine.ensemble import EnsembleOptions, Member, load_thresholds, majority_class, predict_image
from inference.engine.postprocess import fill_holes, load_min_area, postprocess, remove_small
from inference.engine.predictor import Predictor
from inference.organs import CLASSES, class_index


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def binary_member(p: float, weight: float = 1.0, threshold: float = 0.5) -> Member:
    cfg = CheckpointConfig(name="b", fold=0, framework="torchscript", task="binary", classes=["ftu"],
                           tile_size=32, weights="model.ts", threshold=threshold)
    return Member(Predictor(cfg, ConstantNet([logit(p)])), weight)


def multiclass_member(net, weight: float = 1.0) -> Member:
    cfg = CheckpointConfig(name="m", fold=0, framework="torchscript", task="multiclass", classes=list(CLASSES),
                           tile_size=32, weights="model.ts")
    return Member(Predictor(cfg, net), weight)


IMAGE = np.zeros((70, 50, 3), dtype=np.uint8)
AS_IS = EnsembleOptions(scale_mode="none")


def one_hot_probs(labels: np.ndarray) -> np.ndarray:
    return np.eye(len(CLASSES), dtype=np.float32)[labels].transpose(2, 0, 1)


def test_majority_class_takes_most_frequent_non_background() -> None:
    labels = np.zeros((10, 10), dtype=int)
    labels[:3] = 2  # 30 % prostate
    labels[5] = 4  # 10 % spleen
    assert majority_class([one_hot_probs(labels)], [1.0]) == 2


def test_majority_class_is_weighted_over_members() -> None:
    a, b = np.zeros((10, 10), dtype=int), np.zeros((10, 10), dtype=int)
    a[:2], b[:3] = 1, 5
    assert majority_class([one_hot_probs(a), one_hot_probs(b)], [1.0, 1.0]) == 5
    assert majority_class([one_hot_probs(a), one_hot_probs(b)], [3.0, 1.0]) == 1


def test_majority_class_without_foreground_uses_mean_probability() -> None:
    probs = np.zeros((len(CLASSES), 4, 4), dtype=np.float32)
    probs[0], probs[3] = 0.7, 0.2
    probs[1] = 0.1
    assert majority_class([probs], [1.0]) == 3


def test_multiclass_mask_is_the_majority_class() -> None:
    image = IMAGE.copy()
    image[10:40, 5:30, 0] = 255  # bright red: ColourNet makes class 4 (spleen) win there
    decision = predict_image(image, [multiclass_member(ColourNet(hot=4))], organ="kidney",
                             options=EnsembleOptions(scale_mode="none", organ_from="model"))
    assert decision.class_index == 4
    assert decision.mask[15:35, 10:25].all() and not decision.mask[50:, 35:].any()
    assert predict_image(image, [multiclass_member(ColourNet(hot=4))], organ="", options=AS_IS).class_index == 4
    forced = predict_image(image, [multiclass_member(ColourNet(hot=4))], organ="kidney", options=AS_IS)  # csv
    assert forced.class_index == class_index("kidney")
    assert not forced.mask.any()


def test_mean_mode_averages_with_weights_and_thresholds() -> None:
    members = [binary_member(0.3), binary_member(0.8)]
    d = predict_image(IMAGE, members, organ="kidney", options=EnsembleOptions(ensemble="mean"))
    assert d.probability.shape == (70, 50) and np.allclose(d.probability, 0.55, atol=1e-5)
    assert d.mask.all() and d.threshold == 0.5
    kidney = EnsembleOptions(organ_thresholds={"kidney": 0.6})
    assert not predict_image(IMAGE, members, organ="kidney", options=kidney).mask.any()
    assert predict_image(IMAGE, members, organ="lung", options=kidney).mask.all()
    weighted = [binary_member(0.3, weight=3.0), binary_member(0.8, weight=1.0)]
    d = predict_image(IMAGE, weighted, organ="kidney")
    assert np.allclose(d.probability, 0.425, atol=1e-5) and not d.mask.any()


def test_mean_mode_default_threshold_is_weighted_config_threshold() -> None:
    members = [binary_member(0.5, threshold=0.2), binary_member(0.5, threshold=0.6)]
    assert predict_image(IMAGE, members, organ="kidney").threshold == pytest.approx(0.4)
    high = EnsembleOptions(threshold=0.7)
    assert predict_image(IMAGE, members, organ="kidney", options=high).threshold == pytest.approx(0.7)


def test_union_mode_ors_member_masks() -> None:
    members = [binary_member(0.3), binary_member(0.8)]
    union = EnsembleOptions(ensemble="union")
    assert predict_image(IMAGE, members, organ="kidney", options=union).mask.all()
    strict = EnsembleOptions(ensemble="union", organ_thresholds={"kidney": 0.9})
    assert not predict_image(IMAGE, members, organ="kidney", options=strict).mask.any()
    low = [binary_member(0.3), binary_member(0.4)]
    assert not predict_image(IMAGE, low, organ="kidney", options=union).mask.any()
    assert predict_image(IMAGE, [binary_member(0.3, threshold=0.2), binary_member(0.4)], organ="kidney",
                         options=union).mask.all()


def test_members_at_different_working_sizes_combine_at_full_resolution() -> None:
    cfg = CheckpointConfig(name="b", fold=0, framework="torchscript", task="binary", classes=["ftu"],
                           tile_size=16, weights="model.ts", reduce=3)
    members = [binary_member(0.2), Member(Predictor(cfg, ConstantNet([logit(0.6)])))]
    d = predict_image(IMAGE, members, organ="kidney")
    assert d.probability.shape == IMAGE.shape[:2] and np.allclose(d.probability, 0.4, atol=1e-5)


def test_load_thresholds_validates(tmp_path: Path) -> None:
    good = tmp_path / "t.json"
    good.write_text(json.dumps({"kidney": 0.3, "lung": 0.1}))
    assert load_thresholds(good) == {"kidney": 0.3, "lung": 0.1}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"liver": 0.3}))
    with pytest.raises(ValueError, match="unknown organ"):
        load_thresholds(bad)
    bad.write_text(json.dumps({"kidney": 1.5}))
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        load_thresholds(bad)


def test_fill_holes_and_remove_small() -> None:
    ring = np.zeros((20, 20), dtype=bool)
    ring[5:15, 5:15] = True
    ring[8:12, 8:12] = False
    assert fill_holes(ring)[5:15, 5:15].all()
    mask = np.zeros((30, 30), dtype=bool)
    mask[:10, :10] = True  # 100 px
    mask[20:23, 20:23] = True  # 9 px
    kept = remove_small(mask, 10)
    assert kept[:10, :10].all() and not kept[20:23, 20:23].any()


def test_postprocess_converts_um2_by_pixel_size(tmp_path: Path) -> None:
    mask = np.zeros((30, 30), dtype=bool)
    mask[:4, :4] = True  # 16 px
    area = {"kidney": 4.0}  # um^2: 16 px at 0.5 um/px (kept), 25 px at 0.4 um/px (dropped)
    assert postprocess(mask, "kidney", 0.5, min_area_um2=area).sum() == 16
    assert postprocess(mask, "kidney", 0.4, min_area_um2=area).sum() == 0
    assert postprocess(mask, "lung", 0.4, min_area_um2=area).sum() == 16
    assert load_min_area("10") == dict.fromkeys(["kidney", "prostate", "largeintestine", "spleen", "lung"], 10.0)
    spec = tmp_path / "a.json"
    spec.write_text(json.dumps({"kidney": 50}))
    assert load_min_area(str(spec)) == {"kidney": 50.0}


class NanNet(ConstantNet):
    """A diverged fold: NaN logits everywhere."""

    def __init__(self) -> None:
        super().__init__([float("nan")])


def test_a_nan_member_is_dropped_and_the_others_reweighted() -> None:
    cfg = CheckpointConfig(name="nan", fold=3, framework="torchscript", task="binary", classes=["ftu"],
                           tile_size=32, weights="model.ts")
    members = [binary_member(0.8, weight=1.0), Member(Predictor(cfg, NanNet()), 3.0)]
    d = predict_image(IMAGE, members, organ="kidney")
    assert np.allclose(d.probability, 0.8, atol=1e-5) and d.mask.all()
    assert d.dropped == ["nan/fold3"] and "nan/fold3" in d.notes[0] and "non-finite" in d.notes[0]
    with pytest.raises(ValueError, match="non-finite"):
        predict_image(IMAGE, members[1:], organ="kidney")


def test_library_defaults_are_the_command_line_defaults() -> None:
    import argparse

    from inference.engine.ensemble import add_ensemble_arguments

    args = add_ensemble_arguments(argparse.ArgumentParser()).parse_args(["--models", "m"])
    assert EnsembleOptions.from_args(args) == EnsembleOptions()
    assert EnsembleOptions().scale_mode == "pixel-size" and EnsembleOptions().max_side == 4608
