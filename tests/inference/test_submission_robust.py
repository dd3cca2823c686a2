"""The submission loop always finishes: hostile inputs, per-stage fallbacks, CUDA OOM retries, the time budget, OOF."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from checkpoints import ConstantNet, make_smp_checkpoint, make_torchscript_checkpoint
from torch import nn

from inference import predict, tune_thresholds
from inference.checkpoint import CheckpointConfig
from inference.engine.budget import degradation_levels
from inference.engine.ensemble import Member
from inference.engine.predictor import Predictor
from inference.io import write_image
from inference.rle import decode, encode_resized
from inference.submission import row as row_module
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
    add(18, "kidney", "HPA", 40, 40, 0.4, _rgb(40, 40), photometric="rgb", compression="lzw")
    add(19, "kidney", "HPA", 40, 40, 0.4, _rgb(40, 40), photometric="rgb", compression="jpeg", tile=(16, 16))
    add(20, "kidney", "HPA", 40, 40, 0.4, _rgb(40, 40, 1).repeat(2, -1)[..., :4], photometric="separated")  # CMYK
    add(21, "kidney", "HPA", 40, 40, 0.4, _rgb(40, 40)[..., 0], photometric="palette",
        colormap=np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1)))
    (root / "test.csv").write_text(COLUMNS + "\n" + "\n".join(rows) + "\n")
    return root, {"good": good, "warned": warned}


def test_lenient_loader_normalises_and_names_each_problem(hostile: tuple[Path, dict]) -> None:
    table, notes = load_test_lenient(hostile[0] / "test.csv")
    assert table["id"].tolist() == [str(i) for i in range(1, 22)]
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


class FakeClock:
    """A clock that moves only when told: budget tests that do not depend on the machine's speed."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ClockNet(nn.Module):
    """A constant positive logit that advances a FakeClock per window (plus once a warm-up cost)."""

    def __init__(self, clock: FakeClock, per_window: float, warmup: float = 0.0) -> None:
        super().__init__()
        self.clock, self.per_window, self.warmup = clock, per_window, warmup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock.now += self.per_window * x.shape[0] + self.warmup
        self.warmup = 0.0
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


def _clocked_run(tmp_path: Path, budget_share: float, warmup: float = 0.0, n: int = 20,
                 caplog: pytest.LogCaptureFixture | None = None) -> tuple[predict.Run, FakeClock, float]:
    """20 images of 1 window, 2 members at TTA 4; the budget is budget_share x what the full settings need."""
    data = _folder(tmp_path / "data", n)
    table, _ = load_test_lenient(data / "test.csv")
    clock = FakeClock()
    members = [Member(_binary(ClockNet(clock, 0.5, warmup)), 1.0), Member(_binary(ClockNet(clock, 0.5)), 0.5)]
    options = predict.Options(tta=4)
    full = n * 2 * 4 * 0.5  # images x members x views x seconds per window
    run = predict.predict_table(table, data / "test_images", members, options, time_budget=budget_share * full,
                                start=0.0, clock=clock)
    return run, clock, budget_share * full


def test_time_budget_binds_and_every_row_is_written(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        run, clock, budget = _clocked_run(tmp_path, 0.5)
    assert clock.now <= budget, run.budget.summary()
    assert len(run.submission) == 20 and (run.submission["rle"] != "").all()
    assert run.budget.events and run.budget.events[0].startswith("TTA 4 -> 2 views")
    assert any("time budget" in r.getMessage() for r in caplog.records)
    assert "dropped at image" in run.budget.summary()


def test_a_warm_up_outlier_does_not_drop_tta_when_the_full_settings_fit(tmp_path: Path) -> None:
    # the first forward costs 40 windows more (CUDA context, TorchScript profiling); the budget fits the rest
    run, clock, budget = _clocked_run(tmp_path, 1.4, warmup=20.0)
    assert clock.now <= budget
    assert not run.budget.events, run.budget.summary()
    assert (run.submission["rle"] != "").all()


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

    monkeypatch.setattr(row_module, "postprocess", broken)
    monkeypatch.setattr(row_module, "save_probability", broken)
    options = predict.Options(save_probs=tmp_path / "probs", fill_holes=True)
    with caplog.at_level(logging.WARNING):
        run = predict.predict_table(table, data / "test_images", [Member(_binary(ConstantNet([3.0])))], options)
    assert (run.submission["rle"] != "").all() and not run.bad and run.warned == ["1", "2"]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("id 1: post-processing failed") and "raw mask kept" in m for m in messages)
    assert any(m.startswith("id 2: --save-probs failed") for m in messages)


class NanNet(nn.Module):
    """A diverged or badly exported fold: NaN logits everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 1, x.shape[2], x.shape[3]), float("nan")) + 0.0 * x[:, :1]


def test_a_nan_member_beside_a_good_one_gives_non_empty_rows_and_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    data = _folder(tmp_path / "data", 3)
    good = make_torchscript_checkpoint(tmp_path / "good" / "fold0", ConstantNet([3.0]), tile=32, task="binary")
    bad = make_torchscript_checkpoint(tmp_path / "bad" / "fold1", NanNet(), tile=32, task="binary", fold=1)
    out = tmp_path / "sub.csv"
    with caplog.at_level(logging.WARNING):
        rc = predict.main(["--data-dir", str(data), "--models", str(good), str(bad), "--out", str(out)])
    assert rc == 0
    assert (pd.read_csv(out, dtype=str, keep_default_na=False)["rle"] != "").all()
    messages = [r.getMessage() for r in caplog.records]
    for i in (1, 2, 3):
        assert any(m.startswith(f"id {i}: model {bad}") and "non-finite" in m for m in messages), messages
    assert "3 image(s) had a model left out for non-finite output" in capsys.readouterr().out


def test_an_all_empty_submission_is_reported_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = _folder(tmp_path / "data", 2)
    negative = make_torchscript_checkpoint(tmp_path / "neg" / "fold0", ConstantNet([-5.0]), tile=32, task="binary")
    with caplog.at_level(logging.ERROR):
        predict.main(["--data-dir", str(data), "--models", str(negative), "--out", str(tmp_path / "s.csv")])
    assert any("EVERY ROW" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


def test_ids_that_are_not_plain_file_names_are_bad_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = _folder(tmp_path / "data", 1)
    write_image(data / "x.tiff", _rgb(32, 32))  # outside test_images/: must never be read
    write_image(tmp_path / "abs.tiff", _rgb(32, 32))
    with open(data / "test.csv", "a") as f:
        f.write(f"../x,kidney,HPA,32,32,0.4,4\n{tmp_path / 'abs'},kidney,HPA,32,32,0.4,4\n")
    model = make_torchscript_checkpoint(tmp_path / "m" / "fold0", ConstantNet([3.0]), tile=32, task="binary")
    probs = data / "test_images" / "probs"
    with caplog.at_level(logging.WARNING):
        rc = predict.main(["--data-dir", str(data), "--models", str(model), "--out", str(tmp_path / "s.csv"),
                           "--save-probs", str(probs)])
    assert rc == 0
    sub = pd.read_csv(tmp_path / "s.csv", dtype=str, keep_default_na=False)
    assert sub["rle"].tolist()[0] != "" and sub["rle"].tolist()[1:] == ["", ""]
    assert any(r.getMessage().startswith("id ../x:") and "plain file name" in r.getMessage() for r in caplog.records)
    assert not (data / "test_images" / "x.npy").exists() and not (data / "x.npy").exists()
    assert sorted(p.name for p in probs.iterdir()) == ["1.npy"]


def test_sizes_beyond_the_cap_are_refused_before_reading(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = _folder(tmp_path / "data", 2)
    (data / "test.csv").write_text(COLUMNS + "\n1,kidney,HPA,32,32,0.4,4\n2,kidney,HPA,90000,32,0.4,4\n")
    model = make_torchscript_checkpoint(tmp_path / "m" / "fold0", ConstantNet([3.0]), tile=32, task="binary")
    with caplog.at_level(logging.WARNING):
        predict.main(["--data-dir", str(data), "--models", str(model), "--out", str(tmp_path / "s.csv")])
    sub = pd.read_csv(tmp_path / "s.csv", dtype=str, keep_default_na=False)
    assert sub["rle"].tolist()[0] != "" and sub["rle"].tolist()[1] == ""
    assert any(r.getMessage().startswith("id 2:") and "30000 px cap" in r.getMessage() for r in caplog.records)


def test_a_mask_resized_to_the_csv_size_is_encoded_in_strips() -> None:
    import cv2

    from inference.rle import encode

    mask = np.random.default_rng(0).random((37, 23)) > 0.6
    for h, w in [(100, 71), (37, 23), (10, 5), (600, 3)]:
        expected = encode(cv2.resize(mask.view(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST))
        assert encode_resized(mask, h, w, columns=7) == expected
    assert encode_resized(np.ones((3, 3), bool), 6, 6, columns=4) == "1 36"
    assert encode_resized(np.zeros((3, 3), bool), 6, 6) == ""


def test_weights_outside_the_checkpoint_folder_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _folder(tmp_path / "data", 1)
    folder = make_torchscript_checkpoint(tmp_path / "run" / "fold0", ConstantNet([3.0]), tile=32, task="binary")
    (folder / "model.ts").rename(tmp_path / "elsewhere.ts")
    config = CheckpointConfig.load(folder)
    config.weights = "../../elsewhere.ts"
    config.save(folder)
    rc = predict.main(["--data-dir", str(data), "--models", str(folder), "--out", str(tmp_path / "s.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "outside the checkpoint folder" in err and "fold 0" in err


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated zip", b"\x80\x04 not a pickle"])
@pytest.mark.parametrize("framework", ["torchscript", "smp"])
def test_a_corrupt_checkpoint_names_the_file_and_the_fold(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                          content: bytes, framework: str) -> None:
    data = _folder(tmp_path / "data", 1)
    if framework == "smp":
        folder = make_smp_checkpoint(tmp_path / "run" / "fold2", tile=32, fold=2)
    else:
        folder = make_torchscript_checkpoint(tmp_path / "run" / "fold2", ConstantNet([3.0]), tile=32, task="binary",
                                             fold=2)
    weights = folder / CheckpointConfig.load(folder).weights
    weights.write_bytes(content)
    rc = predict.main(["--data-dir", str(data), "--models", str(tmp_path / "run"), "--out", str(tmp_path / "s.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and str(weights) in err and "fold 2" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("flag,value,allowed", [
    ("--threshold", "nan", "(0.0, 1.0)"), ("--threshold", "1.5", "(0.0, 1.0)"), ("--threshold", "0", "(0.0, 1.0)"),
    ("--weights", "0", "(0.0, inf]"), ("--weights", "-1", "(0.0, inf]"), ("--window-batch", "0", "[1, inf]"),
    ("--time-budget", "0", "(0.0, inf]"), ("--time-budget", "inf", "(0.0, inf]"),
    ("--save-probs-max-side", "0", "[1, inf]"), ("--max-side", "8", "[32, inf]"),
])
def test_bad_option_values_exit_2_naming_the_flag_and_range(flag: str, value: str, allowed: str,
                                                            capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        predict.main(["--data-dir", "d", "--models", "m", flag, value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"argument {flag}" in err and allowed in err, err


def test_a_bad_thresholds_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "t.json"
    bad.write_text('{"kidney": 1.5}')
    with pytest.raises(SystemExit) as exc:
        predict.main(["--data-dir", "d", "--models", "m", "--thresholds", str(bad)])
    assert exc.value.code == 2 and "argument --thresholds" in capsys.readouterr().err
