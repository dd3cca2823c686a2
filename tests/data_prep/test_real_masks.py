"""Real-mask benchmark data: real FTU geometry at the rendered pixel size, split by folds.csv, both stains."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from data_prep.real_masks import HUBMAP_ID_OFFSET, MASK_PIXEL_SIZE, main, make_real_masks, resample_mask
from inference.io import read_image
from inference.organs import ORGANS, organ
from inference.rle import decode
from inference.tables import load_solution, load_test, load_train

REPO = Path(__file__).resolve().parents[2]
PIXEL_SIZE = 3.2  # coarse, so the test renders in seconds


def test_resample_mask_keeps_every_ftu() -> None:
    mask = np.zeros((400, 400), np.uint8)
    cv2.circle(mask, (100, 100), 40, 1, -1)
    mask[300:302, 300:302] = 1  # far smaller than one output pixel
    small = resample_mask(mask, 50, 50)
    assert cv2.connectedComponents(small)[0] - 1 == 2
    assert abs(small.sum() - np.pi * 5**2) < 0.25 * np.pi * 5**2  # the disc keeps its physical area


@pytest.fixture(scope="module")
def rows_csv(real_fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few real rows (one test-fold and one train-fold row per organ) copied to a temporary CSV."""
    rows = pd.read_csv(real_fixtures / "train_rows_sample.csv").drop(columns=["fold"], errors="ignore")
    folds = pd.read_csv(REPO / "folds.csv", usecols=["id", "fold"])
    rows = rows.merge(folds, on="id")
    picked = [g.head(1) for _, g in rows.groupby(["organ", rows["fold"] == 0])]
    path = tmp_path_factory.mktemp("rows") / "rows.csv"
    pd.concat(picked).drop(columns=["fold"]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def real_data(rows_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real_masks")
    return make_real_masks(out, rows_csv, REPO / "folds.csv", (0,), PIXEL_SIZE, seed=0, swap_stain=True,
                           targets=True)


def test_split_follows_folds_and_test_has_both_sources(real_data: Path, rows_csv: Path) -> None:
    rows = pd.read_csv(rows_csv).merge(pd.read_csv(REPO / "folds.csv", usecols=["id", "fold"]), on="id")
    train, test = load_train(real_data / "train.csv"), load_test(real_data / "test.csv")
    assert set(train["id"]) == set(rows.loc[rows["fold"] != 0, "id"])
    assert (train["data_source"] == "HPA").all() and np.allclose(train["pixel_size"], PIXEL_SIZE)
    test_ids = set(rows.loc[rows["fold"] == 0, "id"])
    assert set(test.loc[test["data_source"] == "HPA", "id"]) == test_ids
    assert set(test.loc[test["data_source"] == "Hubmap", "id"]) == {i + HUBMAP_ID_OFFSET for i in test_ids}
    assert set(test["organ"]) == set(ORGANS)
    for r in test[test["data_source"] == "Hubmap"].itertuples():
        assert r.pixel_size == pytest.approx(max(organ(r.organ).pixel_size["Hubmap"], PIXEL_SIZE), rel=1e-3)


def test_masks_keep_their_real_physical_geometry(real_data: Path, rows_csv: Path) -> None:
    real = pd.read_csv(rows_csv).set_index("id")
    train = load_train(real_data / "train.csv")
    solution = pd.concat([train.assign(folder="train_images"),
                          load_solution(real_data / "test_solution.csv").assign(folder="test_images")])
    for r in solution.itertuples():
        source = real.loc[r.id % HUBMAP_ID_OFFSET]
        full = decode(source["rle"], int(source["img_height"]), int(source["img_width"]))
        px = PIXEL_SIZE if r.id < HUBMAP_ID_OFFSET else max(organ(r.organ).pixel_size["Hubmap"], PIXEL_SIZE)
        assert (r.img_height, r.img_width) == tuple(round(n * MASK_PIXEL_SIZE / px) for n in full.shape)
        mask = decode(r.rle, r.img_height, r.img_width)
        area_real, area = full.sum() * MASK_PIXEL_SIZE**2, mask.sum() * px**2
        assert area == pytest.approx(area_real, rel=0.35 if px > 5 else 0.1), (r.id, r.organ)
        image = read_image(real_data / r.folder / f"{r.id}.tiff")
        assert image.shape == (r.img_height, r.img_width, 3)


def test_stains_differ_over_the_same_layers(real_data: Path) -> None:
    test = load_solution(real_data / "test_solution.csv")
    swap = load_solution(real_data / "swap" / "test_solution.csv")
    assert list(swap["id"]) == list(test["id"]) and list(swap["rle"]) == list(test["rle"])
    for r in test.itertuples():
        image = read_image(real_data / "test_images" / f"{r.id}.tiff").astype(np.float32)
        other = read_image(real_data / "swap" / "test_images" / f"{r.id}.tiff").astype(np.float32)
        od = -np.log10((image + 1) / 256).sum(-1)
        od_other = -np.log10((other + 1) / 256).sum(-1)
        assert np.abs(image - other).mean() > 5, r.id  # another stain...
        assert np.corrcoef(od.ravel(), od_other.ravel())[0, 1] > 0.5, r.id  # ...of the same tissue


def test_targets_are_unlabeled_hubmap_images_of_train_masks_only(real_data: Path) -> None:
    train = load_train(real_data / "train.csv")
    targets = pd.read_csv(real_data / "targets" / "targets.csv")
    assert "rle" not in targets
    assert set(targets["id"]) == {i + HUBMAP_ID_OFFSET for i in train["id"]}  # never a test-fold mask
    assert (targets["data_source"] == "Hubmap").all()
    for r in targets.itertuples():
        assert r.pixel_size == pytest.approx(max(organ(r.organ).pixel_size["Hubmap"], PIXEL_SIZE), rel=1e-3)
        assert read_image(real_data / "targets" / f"{r.id}.tiff").shape == (r.img_height, r.img_width, 3)


def test_cli_rejects_missing_rows(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "out"), "--rows", str(tmp_path / "missing.csv")])
    assert exit_info.value.code == 2
    assert "error: --rows" in capsys.readouterr().err
