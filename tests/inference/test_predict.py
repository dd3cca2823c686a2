"""inference.predict, tune_thresholds and overlay end to end on the demo data, checkpoints made without training."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from checkpoints import make_smp_checkpoint, make_torchscript_checkpoint

from inference import overlay, predict, tune_thresholds
from inference.engine.models import resolve_checkpoints
from inference.engine.predictor import load_predictor
from inference.rle import decode, encode
from inference.score import score
from inference.tables import load_solution, load_submission


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2-fold binary smp run folder and a single multiclass TorchScript checkpoint folder."""
    root = tmp_path_factory.mktemp("runs")
    for fold in (0, 1):
        make_smp_checkpoint(root / "unet" / f"fold{fold}", tile=64, seed=fold, fold=fold)
    make_torchscript_checkpoint(root / "tiny" / "fold0", tile=64)
    return {"binary": root / "unet", "multiclass": root / "tiny" / "fold0"}


def test_resolve_checkpoints(runs: dict[str, Path], tmp_path: Path) -> None:
    assert [p.name for p in resolve_checkpoints(runs["binary"])] == ["fold0", "fold1"]
    assert resolve_checkpoints(runs["multiclass"]) == [runs["multiclass"]]
    with pytest.raises(FileNotFoundError, match="fold\\*/config.json"):
        resolve_checkpoints(tmp_path)


def test_load_predictor_gives_probabilities_per_class(runs: dict[str, Path]) -> None:
    image = np.random.default_rng(0).integers(0, 255, (90, 130, 3), dtype=np.uint8)
    binary = load_predictor(runs["binary"] / "fold0")
    probs = binary(image)
    assert probs.shape == (1, 90, 130) and 0 <= probs.min() and probs.max() <= 1
    multi = load_predictor(runs["multiclass"])
    probs = multi(image, tta=2)
    assert probs.shape == (6, 90, 130) and np.allclose(probs.sum(0), 1.0, atol=1e-4)


def test_load_predictor_names_a_missing_weights_file(runs: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(runs["multiclass"], folder)
    (folder / "model.ts").unlink()
    with pytest.raises(FileNotFoundError, match="model.ts"):
        load_predictor(folder)


@pytest.mark.slow
def test_predict_cli_end_to_end(demo_data: Path, runs: dict[str, Path], tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    out, probs = tmp_path / "submission.csv", tmp_path / "probs"
    rc = predict.main(["--data-dir", str(demo_data), "--models", str(runs["binary"]), str(runs["multiclass"]),
                       "--out", str(out), "--tta", "2", "--save-probs", str(probs), "--fill-holes"])
    assert rc == 0
    test = pd.read_csv(demo_data / "test.csv")
    sub = load_submission(out)
    assert sub["id"].tolist() == test["id"].tolist()
    assert "0 bad image(s)" in capsys.readouterr().out
    for r in test.itertuples():
        saved = np.load(probs / f"{r.id}.npy")
        assert saved.dtype == np.float16 and max(saved.shape) <= max(r.img_height, r.img_width)
    assert set(score(sub, load_solution(demo_data / "test_solution.csv"))["per_image"]) == set(test["id"])


def test_union_ensemble_and_weights_run(demo_data: Path, runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "union.csv"
    rc = predict.main(["--data-dir", str(demo_data), "--models", str(runs["binary"]), str(runs["multiclass"]),
                       "--out", str(out), "--ensemble", "union", "--weights", "2", "1", "--limit", "2"])
    assert rc == 0 and len(load_submission(out)) == 2
    assert predict.main(["--data-dir", str(demo_data), "--models", str(runs["binary"]), "--out", str(out),
                         "--weights", "1", "2"]) == 2


def test_bad_images_get_empty_rows_and_resized_ones_a_resized_mask(demo_data: Path, runs: dict[str, Path], tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture,
                                                   capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    test = pd.read_csv(data / "test.csv")
    unreadable, resized, missing = (int(i) for i in test["id"][:3])
    (data / "test_images" / f"{unreadable}.tiff").write_bytes(b"not a tiff")
    test.loc[test["id"] == resized, "img_height"] += 7
    test.to_csv(data / "test.csv", index=False)
    (data / "test_images" / f"{missing}.tiff").unlink()
    out = tmp_path / "submission.csv"
    with caplog.at_level(logging.WARNING, logger="inference.predict"):
        rc = predict.main(["--data-dir", str(data), "--models", str(runs["multiclass"]), "--out", str(out),
                           "--threshold", "0.01"])
    assert rc == 0
    sub = load_submission(out).set_index("id")
    assert len(sub) == len(test)
    for bad in (unreadable, resized, missing):
        assert (sub.loc[bad, "rle"] == "") == (bad != resized)
        assert any(f"id {bad}:" in r.getMessage() for r in caplog.records)
    row = test.set_index("id").loc[resized]
    assert decode(sub.loc[resized, "rle"], int(row.img_height), int(row.img_width)).any()  # in the CSV's frame
    assert "2 bad image(s)" in capsys.readouterr().out


def test_every_image_bad_exits_non_zero(demo_data: Path, runs: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "test_images").mkdir(parents=True)
    shutil.copy(demo_data / "test.csv", data / "test.csv")
    out = tmp_path / "submission.csv"
    assert predict.main(["--data-dir", str(data), "--models", str(runs["multiclass"]), "--out", str(out)]) == 1
    assert (load_submission(out)["rle"] == "").all()


def test_tune_thresholds_finds_the_separating_cut(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    oof, rows = tmp_path / "oof", []
    oof.mkdir()
    for i, organ in enumerate(["kidney", "kidney", "lung"]):
        truth = np.zeros((60, 40), dtype=np.uint8)
        truth[10:30, 5:25] = 1
        high = 0.3 if organ == "kidney" else 0.8  # kidney FTUs sit at 0.3: 0.5 misses them all
        prob = np.where(truth > 0, high, 0.1).astype(np.float16)
        np.save(oof / f"{i + 1}.npy", cv2.resize(prob.astype(np.float32), (20, 30)).astype(np.float16))
        rows.append({"id": i + 1, "organ": organ, "img_height": 60, "img_width": 40, "rle": encode(truth)})
    pd.DataFrame(rows).to_csv(tmp_path / "solution.csv", index=False)
    out = tmp_path / "organs.json"
    assert tune_thresholds.main(["--oof", str(oof), "--solution", str(tmp_path / "solution.csv"),
                                 "--out", str(out)]) == 0
    thresholds = json.loads(out.read_text())
    assert set(thresholds) == {"kidney", "lung"}
    assert 0.1 <= thresholds["kidney"] < 0.3
    text = capsys.readouterr().out
    kidney = next(line for line in text.splitlines() if line.startswith("kidney"))
    assert kidney.split()[2] == "0.0000" and float(kidney.split()[-1]) > 0.9


def test_tune_thresholds_reads_trainer_fold_layout(tmp_path: Path) -> None:
    for fold, image_id in ((0, 1), (1, 2)):
        (tmp_path / "run" / f"fold{fold}" / "oof").mkdir(parents=True)
        np.save(tmp_path / "run" / f"fold{fold}" / "oof" / f"{image_id}.npy", np.zeros((4, 4), np.float16))
    assert sorted(tune_thresholds.find_oof([tmp_path / "run"])) == [1, 2]


def test_overlay_writes_pngs(demo_data: Path, tmp_path: Path) -> None:
    sol = load_solution(demo_data / "test_solution.csv")
    sol[["id", "rle"]].to_csv(tmp_path / "perfect.csv", index=False)
    out = tmp_path / "overlays"
    assert overlay.main(["--data-dir", str(demo_data), "--submission", str(tmp_path / "perfect.csv"),
                         "--solution", str(demo_data / "test_solution.csv"), "--out", str(out),
                         "--png-max-side", "256"]) == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == len(sol)
    picture = cv2.imread(str(pngs[0]))
    assert max(picture.shape[:2]) <= 256 + overlay.CAPTION


def test_overlay_enlarges_small_images_by_a_whole_factor() -> None:
    image = np.zeros((30, 20, 3), np.uint8)
    image[10, 5] = 255
    mask = np.zeros((30, 20), np.uint8)
    mask[5:15, 5:15] = 1
    picture = overlay.render(image, mask, None, "tiny", max_side=1024, min_side=512)
    canvas = picture[overlay.CAPTION:]
    assert canvas.shape[:2] == (30 * 18, 20 * 18)  # ceil(512 / 30) = 18: each pixel a crisp 18 x 18 square
    assert (canvas[10 * 18 + 9, 5 * 18 + 9] == 255).all() and canvas[0, 0].sum() == 0
    assert max(overlay.render(image, mask, None, "t", max_side=100, min_side=512).shape[:2]) <= 100 + overlay.CAPTION

