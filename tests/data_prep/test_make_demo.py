"""Demo dataset: deterministic, in the competition format, with every FTU on stained tissue."""

from __future__ import annotations

import filecmp
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from data_prep.make_demo import TINY_SIDE, make_demo
from inference.io import read_image
from inference.organs import ORGANS, organ
from inference.rle import decode
from inference.tables import (
    SOLUTION_COLUMNS,
    TEST_COLUMNS,
    TRAIN_COLUMNS,
    load_solution,
    load_submission,
    load_test,
    load_train,
)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _images(data: Path):
    """(split, row, image, mask) for every train and test image, test masks from test_solution.csv."""
    for split, table in (
        ("train", load_train(data / "train.csv")),
        ("test", load_solution(data / "test_solution.csv")),
    ):
        for row in table.itertuples():
            image = read_image(data / f"{split}_images" / f"{row.id}.tiff")
            yield split, row, image, decode(row.rle, row.img_height, row.img_width)


def _on_stain(image: np.ndarray, mask: np.ndarray) -> float:
    """Share of mask pixels in components whose box (grown 5 px) is at least 5% stained, not bare slide."""
    od = -np.log10((image.astype(np.float32) + 1) / 256).sum(-1)
    stained = od > 0.25  # bare glass stays below about 0.16 summed over RGB
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    ok = sum(
        a
        for x, y, w, h, a in stats[1:n]
        if stained[max(0, y - 5) : y + h + 5, max(0, x - 5) : x + w + 5].mean() >= 0.05
    )
    return ok / max(int(mask.sum()), 1)


def test_same_seed_same_bytes_other_seed_differs(demo_data: Path, tmp_path: Path) -> None:
    again = make_demo(tmp_path / "again", seed=0, n_train=10, n_test=6)
    assert _files(again) == _files(demo_data)
    _, mismatch, errors = filecmp.cmpfiles(demo_data, again, _files(demo_data), shallow=False)
    assert not mismatch and not errors
    other = make_demo(tmp_path / "other", seed=1, n_train=5, n_test=5)
    assert (other / "train.csv").read_bytes() != (demo_data / "train.csv").read_bytes()
    first = load_train(other / "train.csv").iloc[0]
    image = read_image(other / "train_images" / f"{first.id}.tiff")
    same_id = demo_data / "train_images" / f"{first.id}.tiff"
    assert not same_id.exists() or not np.array_equal(image, read_image(same_id))


def test_rerun_into_same_folder_removes_stale_images(tmp_path: Path) -> None:
    make_demo(tmp_path, seed=0, n_train=5, n_test=5)
    make_demo(tmp_path, seed=1, n_train=5, n_test=5)
    train, test = load_train(tmp_path / "train.csv"), load_test(tmp_path / "test.csv")
    assert sorted(p.stem for p in (tmp_path / "train_images").glob("*.tiff")) == sorted(map(str, train["id"]))
    assert sorted(p.stem for p in (tmp_path / "test_images").glob("*.tiff")) == sorted(map(str, test["id"]))


def test_competition_format(demo_data: Path) -> None:
    train = load_train(demo_data / "train.csv")
    test = load_test(demo_data / "test.csv")
    solution = load_solution(demo_data / "test_solution.csv")
    submission = load_submission(demo_data / "sample_submission.csv")
    assert tuple(pd.read_csv(demo_data / "train.csv").columns) == TRAIN_COLUMNS
    assert tuple(pd.read_csv(demo_data / "test.csv").columns) == TEST_COLUMNS
    assert set(SOLUTION_COLUMNS) <= set(solution.columns) and "data_source" in solution.columns
    assert len(train) == 10 and len(test) == 6
    assert not set(train["id"]) & set(test["id"])
    assert list(submission["id"]) == list(test["id"]) == list(solution["id"])
    assert (train.groupby("organ").size().reindex(ORGANS) == 2).all()
    assert set(test["organ"]) == set(ORGANS)
    assert set(train["data_source"]) == {"HPA"} and set(test["data_source"]) == {"HPA", "Hubmap"}
    for table in (train, test):
        expected = [organ(o).pixel_size[d] for o, d in zip(table["organ"], table["data_source"], strict=True)]
        assert table["pixel_size"].tolist() == expected
    assert (train["img_height"] == train["img_width"]).all()
    side = train["img_height"].max()
    assert 400 <= side <= 600, "default scale should give train images of a few hundred pixels"
    sides = test[["img_height", "img_width"]]
    assert (sides.max(axis=1) <= TINY_SIDE).any(), "a tiny test image"
    assert (sides.min(axis=1) >= 1.3 * side).any(), "a large test image"
    assert (test["img_height"] != test["img_width"]).any(), "a non-square test image"
    for split, row, image, mask in _images(demo_data):
        assert image.shape == (row.img_height, row.img_width, 3), f"{split} {row.id}"
        assert mask.any(), f"{split} {row.id} has no FTU"
        assert 0.01 < mask.mean() < 0.9, f"{split} {row.id}: FTU fraction {mask.mean():.3f}"


def test_masks_lie_on_stained_tissue(demo_data: Path) -> None:
    blank = np.full((64, 64, 3), 245, np.uint8)
    square = np.zeros((64, 64), np.uint8)
    square[20:40, 20:40] = 1
    assert _on_stain(blank, square) == 0, "the check must reject an FTU drawn on bare glass"
    for split, row, image, mask in _images(demo_data):
        assert _on_stain(image, mask) >= 0.98, f"{split} {row.id} ({row.organ}): FTU pixels on bare slide"


def test_rejects_too_few_images_to_cover_organs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 5"):
        make_demo(tmp_path, n_train=4)


def test_targets_are_unlabeled_hubmap_images_with_ids_apart(demo_data: Path) -> None:
    from data_prep.make_demo import TARGET_ID_BASE, TARGET_MIN_SIDE

    table = load_test(demo_data / "targets" / "images.csv")  # test.csv's columns: organ, source, size, pixel size
    train, test = load_train(demo_data / "train.csv"), load_test(demo_data / "test.csv")
    assert sorted(table["organ"]) == sorted(ORGANS) and (table["data_source"] == "Hubmap").all()
    assert (table["id"] >= TARGET_ID_BASE).all() and not set(table["id"]) & (set(train["id"]) | set(test["id"]))
    for row in table.itertuples():
        image = read_image(demo_data / "targets" / f"{row.id}.tiff")
        assert image.shape == (row.img_height, row.img_width, 3) and min(image.shape[:2]) >= TARGET_MIN_SIDE
        assert row.pixel_size == organ(row.organ).pixel_size["Hubmap"]
        od = -np.log((image.reshape(-1, 3).astype(float) + 1) / 256)
        stained = od[od.sum(1) > 0.5]
        assert len(stained) > 500 and stained[:, 1].mean() > stained[:, 2].mean()  # eosin / PAS: green absorbed
