"""The submission loop always finishes: hostile inputs, per-stage fallbacks, CUDA OOM retries, the time budget, OOF."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from checkpoints import ConstantNet, make_smp_checkpoint, make_torchscript_checkpoint
from torch import nn

from inference import predict, tune_thresholds
from inference.engine.budget import degradation_levels
from inference.checkpoint import CheckpointConfig
from inference.engine.ensemble import Member
from inference.io import write_image
from inference.engine.predictor import Predictor
from inference.rle import decode
from inference.tables import load_test_lenient

COLUMNS = "id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness"


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def positive_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An smp Unet whose output is logit +5 everywhere: any image it predicts gets a non-empty mask."""
    return make_smp_checkpoint(tmp_path_factory.mktemp("pos") / "run" / "fold0", tile=64, logit=5.0, pixel_size=2.0)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, set[str]]]:
    """A competition-layout folder of hostile rows; returns it and the ids that must be non-empty / warned."""
    root = tmp_path_factory.mktemp("hostile")
    images = root / "test_images"
    images.mkdir()
    rows, good, warned = [], set(), set()

    def add(i: int, organ: str, source: str, h: object, w: object, ps: object, pixels: np.ndarray | None = None,
            ok: bool = True, bad: bool = False, **tiff) -> None:
        rows.append(f"{i},{organ},{source},{h},{w},{ps},4")
        if pixels is not None:
            tifffile.imwrite(images / f"{i}.tiff", pixels, **tiff)
        (good if ok else set()).add(str(i))
        (warned if bad else set()).add(str(i))

    add(1, "kidney", "HPA", 32, 32, 0.4, ok=False, bad=True)
    (images / "1.tiff").write_bytes(b"II*\x00 this is not a TIFF")  # corrupt
    write_image(images / "2.tiff", _rgb(64, 64))
    data = (images / "2.tiff").read_bytes()
    (images / "2.tiff").write_bytes(data[: len(data) // 2])  # truncated
    add(2, "kidney", "HPA", 64, 64, 0.4, ok=False, bad=True)
    add(3, "spleen", "HPA", 32, 32, 0.4, ok=False, bad=True)  # missing file
    rgba = np.concatenate([_rgb(40, 48), np.full((40, 48, 1), 255, np.uint8)], -1)
    add(4, "lung", "HPA", 40, 48, 0.4, rgba, photometric="rgb", extrasamples=["unassalpha"])
    add(5, "kidney", "HPA", 33, 35, 0.4, (_rgb(33, 35).astype(np.uint32) * 4095 // 255).astype(np.uint16),
        photometric="rgb")  # 12-bit data in 16 bits
    add(6, "spleen", "HPA", 30, 31, 0.4, _rgb(30, 31)[..., 0])  # grayscale
    add(7, "prostate", "HPA", 36, 28, 0.4, np.ascontiguousarray(np.moveaxis(_rgb(36, 28), -1, 0)),
        photometric="minisblack")  # channel-first
    add(8, "lung", "HPA", 29, 41, 0.4, _rgb(29, 41).astype(np.float32) / 255.0, photometric="rgb")  # float
    add(9, "kidney", "HPA", 32, 32, 0.4, _rgb(30, 30), bad=True)  # size disagrees with the CSV
    add(10, "spleen", "HPA", 1, 1, 0.4, _rgb(1, 1))
    add(11, "largeintestine", "HPA", 16, 40, 0.4, _rgb(16, 40))
    add(12, "kidney", "HuBMAP", 48, 48, 0.5, _rgb(48, 48), bad=True)  # data_source spelling
    add(13, "lung", "Hubmap", 40, 40, "", _rgb(40, 40), bad=True)  # empty pixel_size
    add(14, "prostate", "Hubmap", 40, 40, 6.263, _rgb(40, 40))  # 6.263 um/px: upscaled 3x in pixel-size mode
    add(15, "liver", "Hubmap", 24, 24, "", _rgb(24, 24), bad=True)  # unknown organ, no pixel size
    add(16, "spleen", "GTEx", 24, 24, 0.4945, _rgb(24, 24), bad=True)  # unknown data_source
    add(17, "kidney", "HPA", "", 26, 0.4, _rgb(22, 26), bad=True)  # missing img_height
    (root / "test.csv").write_text(COLUMNS + "\n" + "\n".join(rows) + "\n")
    return root, {"good": good, "warned": warned}


def test_lenient_loader_normalises_and_names_each_problem(hostile: tuple[Path, dict]) -> None:
    table, notes = load_test_lenient(hostile[0] / "test.csv")
    assert table["id"].tolist() == [str(i) for i in range(1, 18)]
    row = table.set_index("id")
    assert row.loc["12", "data_source"] == "Hubmap" and np.isnan(row.loc["13", "pixel_size"])
    assert row.loc["17", "img_height"] == 0
    assert {i for i, _ in notes} == {"12", "13", "15", "16", "17"}


@pytest.mark.parametrize("scale_mode", ["pixel-size", "reduce"])
def test_hostile_folder_exits_0_with_every_row(hostile: tuple[Path, dict], positive_checkpoint: Path,
                                               scale_mode: str, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    data, expect = hostile
    out = tmp_path / "submission.csv"
    with caplog.at_level(logging.WARNING):
        rc = predict.main(["--data-dir", str(data), "--models", str(positive_checkpoint), "--out", str(out),
                           "--scale-mode", scale_mode, "--fill-holes"])
    assert rc == 0
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    test = pd.read_csv(data / "test.csv", dtype=str, keep_default_na=False)
    assert sub["id"].tolist() == test["id"].tolist()
    messages = [r.getMessage() for r in caplog.records]
    for r in test.itertuples():
        rle = sub.loc[sub["id"] == r.id, "rle"].item()
        if r.id in expect["good"]:
            h, w = (int(r.img_height), int(r.img_width)) if r.img_height else (22, 26)
            assert decode(rle, h, w).any(), f"id {r.id}: empty mask"
        else:
            assert rle == ""
        if r.id in expect["warned"] or r.id not in expect["good"]:
            assert any(m.startswith(f"id {r.id}:") for m in messages), f"no warning names id {r.id}"


class SlowNet(nn.Module):
    """A constant positive logit after a fixed sleep per forward: makes the time budget bind on CPU."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return torch.full((x.shape[0], 1, x.shape[2], x.shape[3]), 3.0)


def _binary(net: nn.Module, fold: int = 0, tile: int = 32) -> Predictor:
    cfg = CheckpointConfig(name="t", fold=fold, framework="torchscript", task="binary", classes=["ftu"],
                           tile_size=tile, weights="model.ts")
    return Predictor(cfg, net)


def _folder(root: Path, n: int, size: int = 32, split: str = "test") -> Path:
    (root / f"{split}_images").mkdir(parents=True)
    rows = [f"{i},kidney,HPA,{size},{size},0.4,4" for i in range(1, n + 1)]
    (root / f"{split}.csv").write_text(COLUMNS + "\n" + "\n".join(rows) + "\n")
    for i in range(1, n + 1):
        write_image(root / f"{split}_images" / f"{i}.tiff", _rgb(size, size, i))
    return root


def test_time_budget_binds_and_every_row_is_written(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = _folder(tmp_path / "data", 20)
    table, _ = load_test_lenient(data / "test.csv")
    members = [Member(_binary(SlowNet(0.04)), 1.0), Member(_binary(SlowNet(0.04)), 0.5)]
    options = predict.Options(tta=4)
    start = time.perf_counter()
    predict.predict_one(np.zeros((32, 32, 3), np.uint8), "kidney", 0.4, members, options)
    per_image = time.perf_counter() - start  # full settings: 2 members x 4 views x 1 window
    budget = 10 * per_image  # half of what 20 images need
    with caplog.at_level(logging.WARNING):
        start = time.perf_counter()
        run = predict.predict_table(table, data / "test_images", members, options, time_budget=budget, start=start)
        seconds = time.perf_counter() - start
    assert seconds <= 1.1 * budget, (seconds, budget, run.budget.summary())
    assert len(run.submission) == 20 and (run.submission["rle"] != "").all()
    assert run.budget.events and run.budget.events[0].startswith("TTA 4 -> 2 views dropped at image")
    assert any("time budget" in r.getMessage() for r in caplog.records)
    assert "dropped at image" in run.budget.summary()


def test_degradation_order_is_tta_then_lowest_weight_then_scale() -> None:
    levels = degradation_levels(8, [1.0, 0.5, 2.0])
    assert [lv.change for lv in levels] == [
        "full settings", "TTA 8 -> 4 views", "TTA 4 -> 2 views", "TTA 2 -> 0 views",
        "member 1 (weight 0.5)", "member 0 (weight 1)", "working scale x0.75", "working scale x0.5"]
    assert levels[-1].dropped == (1, 0) and levels[-1].tta == 0
    assert [lv.cost for lv in levels] == sorted((lv.cost for lv in levels), reverse=True)


def test_folds_each_checkpoint_predicts_only_its_validation_fold(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    data = _folder(tmp_path / "data", 6, split="train")
    pd.DataFrame({"id": [1, 2, 3, 4, 5], "organ": "kidney", "fold": [0, 0, 1, 1, 2]}).to_csv(
        tmp_path / "folds.csv", index=False)  # id 6 is in no fold; fold 2 has no checkpoint
    values = {0: 0.2, 1: 0.6, -1: 0.9}  # each checkpoint leaves its fingerprint in the saved maps
    for fold, p in values.items():
        make_torchscript_checkpoint(tmp_path / "run" / f"fold{fold}", ConstantNet([float(np.log(p / (1 - p)))]),
                                    tile=32, task="binary", fold=fold)
    probs = tmp_path / "oof"
    with caplog.at_level(logging.WARNING):
        rc = predict.main(["--data-dir", str(data), "--split", "train", "--models", str(tmp_path / "run"),
                           "--folds", str(tmp_path / "folds.csv"), "--save-probs", str(probs),
                           "--out", str(tmp_path / "oof.csv")])
    assert rc == 0
    folds = {1: 0, 2: 0, 3: 1, 4: 1}
    assert sorted(int(f.stem) for f in probs.glob("*.npy")) == sorted(folds)
    for image_id, fold in folds.items():
        assert np.allclose(np.load(probs / f"{image_id}.npy"), values[fold], atol=1e-3)
    out = capsys.readouterr().out
    assert "4 image(s) predicted out of fold by 2 checkpoint(s)" in out and "['5']" in out and "['6']" in out
    assert any("fold -1" in r.getMessage() for r in caplog.records)
    assert len(pd.read_csv(tmp_path / "oof.csv")) == 6
    (probs / "7.npy.tmp.npy").write_bytes(b"half written")  # an interrupted save
    assert sorted(tune_thresholds.find_oof([probs])) == [1, 2, 3, 4]


class OomNet(nn.Module):
    """Raises CUDA out-of-memory for batches larger than `max_batch`, and for the first `fail_calls` calls."""

    def __init__(self, max_batch: int = 1, fail_calls: int = 0) -> None:
        super().__init__()
        self.max_batch, self.fail_calls = max_batch, fail_calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail_calls > 0:
            self.fail_calls -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if x.shape[0] > self.max_batch:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.full((x.shape[0], 1, x.shape[2], x.shape[3]), 3.0)


def test_oom_retries_batch_1_then_without_tta(caplog: pytest.LogCaptureFixture) -> None:
    image = np.zeros((64, 64, 3), np.uint8)  # 9 windows of 32 px
    member = Member(_binary(OomNet(max_batch=1)))
    with caplog.at_level(logging.WARNING):
        rle, decision = predict.predict_one(image, "kidney", 0.4, [member], predict.Options(scale_mode="none"),
                                            image_id="oom1")
    assert rle and member.predictor.batch_size == 4  # restored after the retry
    assert decision.notes == ["CUDA out of memory: retried with batch size 1"]
    member = Member(_binary(OomNet(max_batch=64, fail_calls=2)))
    _, decision = predict.predict_one(image, "kidney", 0.4, [member], predict.Options(scale_mode="none", tta=2),
                                      image_id="oom2")
    assert len(decision.notes) == 2 and "without TTA" in decision.notes[1]
    assert any(r.getMessage().startswith("id oom2: CUDA out of memory at batch size 1") for r in caplog.records)


def test_postprocess_and_save_probs_failures_keep_the_mask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    data = _folder(tmp_path / "data", 2)
    table, _ = load_test_lenient(data / "test.csv")

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(predict, "postprocess", broken)
    monkeypatch.setattr(predict, "save_probability", broken)
    options = predict.Options(save_probs=tmp_path / "probs", fill_holes=True)
    with caplog.at_level(logging.WARNING):
        run = predict.predict_table(table, data / "test_images", [Member(_binary(ConstantNet([3.0])))], options)
    assert (run.submission["rle"] != "").all() and not run.bad and run.warned == ["1", "2"]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("id 1: post-processing failed") and "raw mask kept" in m for m in messages)
    assert any(m.startswith("id 2: --save-probs failed") for m in messages)
