"""CSV validation messages, the Dice metric and scorer on hand-computed cases, and the folds builder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep.make_folds import make_folds
from inference.metric import dice
from inference.organs import CLASSES, ORGANS, class_index, pixel_size
from inference.rle import encode
from inference.score import main as score_main
from inference.score import score
from inference.tables import TableError, load_solution, load_submission, load_test, load_train

REPO = Path(__file__).resolve().parents[1]
TEST_ROW = "id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness\n10078,spleen,Hubmap,2023,2023,0.4945,4\n"


def _csv(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_organ_table() -> None:
    assert CLASSES[0] == "background" and CLASSES[1:] == ORGANS
    assert [class_index(o) for o in ORGANS] == [1, 2, 3, 4, 5]
    assert pixel_size("prostate", "Hubmap") == 6.263 and pixel_size("lung", "HPA") == 0.4
    with pytest.raises(KeyError, match="expected one of"):
        class_index("liver")
    with pytest.raises(KeyError, match="data_source"):
        pixel_size("kidney", "HuBMAP")


def test_load_test_ok(tmp_path: Path) -> None:
    df = load_test(_csv(tmp_path, TEST_ROW))
    assert df["id"].tolist() == [10078] and df["img_height"].dtype == np.int64


def test_missing_column_named(tmp_path: Path) -> None:
    with pytest.raises(TableError, match=r"missing column\(s\) \['pixel_size'\]"):
        load_test(_csv(tmp_path, TEST_ROW.replace("pixel_size,", "").replace("0.4945,", "")))


def test_bad_types_named(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="'img_height' must hold integers.*'big'"):
        load_test(_csv(tmp_path, TEST_ROW.replace("2023,2023", "big,2023")))
    with pytest.raises(TableError, match="'pixel_size' must be numeric"):
        load_test(_csv(tmp_path, TEST_ROW.replace("0.4945", "half")))


def test_bad_categories_named(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="unknown organ.*liver"):
        load_test(_csv(tmp_path, TEST_ROW.replace("spleen", "liver")))
    with pytest.raises(TableError, match="unknown data_source.*HuBMAP"):
        load_test(_csv(tmp_path, TEST_ROW.replace("Hubmap", "HuBMAP")))


def test_duplicate_ids(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="duplicate id"):
        load_submission(_csv(tmp_path, "id,rle\n1,1 2\n1,\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="CSV not found"):
        load_train(tmp_path / "train.csv")


def test_real_tables_validate(real_fixtures: Path) -> None:
    assert len(load_test(real_fixtures / "test.csv")) == 1
    assert len(load_submission(real_fixtures / "sample_submission.csv")) == 1
    train = load_train(real_fixtures / "train_rows_sample.csv")
    assert set(train["data_source"]) == {"HPA"} and len(train) == 71


def test_dice_hand_computed() -> None:
    a = np.zeros((4, 4), np.uint8)
    b = np.zeros((4, 4), np.uint8)
    a[:2, :2] = 1  # 4 pixels
    b[:2, :3] = 1  # 6 pixels, 4 shared
    assert dice(a, b) == pytest.approx(2 * 4 / 10)
    assert dice(a, np.zeros_like(a)) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    with pytest.raises(ValueError, match="shape"):
        dice(a, np.zeros((4, 5)))


def _solution() -> pd.DataFrame:
    m1 = np.zeros((4, 6), np.uint8)
    m1[1:3, 1:4] = 1  # 6 pixels
    m2 = np.zeros((5, 3), np.uint8)
    m2[0, :] = 1  # 3 pixels
    return pd.DataFrame({
        "id": [1, 2, 3], "organ": ["kidney", "kidney", "lung"], "data_source": ["HPA", "Hubmap", "Hubmap"],
        "img_height": [4, 5, 5], "img_width": [6, 3, 3], "rle": [encode(m1), encode(m2), encode(m2)],
    }), m1, m2


def test_score_hand_computed() -> None:
    sol, m1, m2 = _solution()
    half = m1.copy()
    half[1, 1:4] = 0  # 3 of 6 pixels predicted -> Dice 2*3/9
    sub = pd.DataFrame({"id": [1, 2], "rle": [encode(half), encode(m2)]})  # id 3 missing -> empty
    result = score(sub, sol)
    assert result["per_image"] == pytest.approx({1: 2 / 3, 2: 1.0, 3: 0.0})
    assert result["dice"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert result["per_organ"] == pytest.approx({"kidney": (2 / 3 + 1) / 2, "lung": 0.0})
    assert result["per_data_source"] == pytest.approx({"HPA": 2 / 3, "Hubmap": 0.5})
    assert result["missing"] == [3] and result["n"] == 3


def test_score_rejects_unknown_ids() -> None:
    sol, _, _ = _solution()
    with pytest.raises(TableError, match="not in the solution"):
        score(pd.DataFrame({"id": [99], "rle": [""]}), sol)


def test_score_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sol, m1, m2 = _solution()
    sol.to_csv(tmp_path / "sol.csv", index=False)
    pd.DataFrame({"id": [1, 2, 3], "rle": [encode(m1), encode(m2), ""]}).to_csv(tmp_path / "sub.csv", index=False)
    assert score_main(["--submission", str(tmp_path / "sub.csv"), "--solution", str(tmp_path / "sol.csv"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dice"] == pytest.approx(2 / 3) and out["n"] == 3 and set(out["per_organ"]) == {"kidney", "lung"}
    assert load_solution(tmp_path / "sol.csv")["rle"].iloc[2] != ""


def test_score_cli_reports_duplicates(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sol, _, _ = _solution()
    sol.to_csv(tmp_path / "sol.csv", index=False)
    (tmp_path / "sub.csv").write_text("id,rle\n1,\n1,\n")
    assert score_main(["--submission", str(tmp_path / "sub.csv"), "--solution", str(tmp_path / "sol.csv")]) == 2
    assert "duplicate id" in capsys.readouterr().err


def test_folds_balanced_and_seeded() -> None:
    ids = {o: list(range(100 * i, 100 * i + n)) for i, (o, n) in enumerate(zip(ORGANS, [99, 93, 58, 53, 48], strict=True))}
    folds = make_folds(ids, n_folds=5, seed=7)
    assert len(folds) == 351 and folds["id"].is_unique
    per_organ = folds.groupby(["organ", "fold"]).size().unstack()
    assert ((per_organ.max(axis=1) - per_organ.min(axis=1)) <= 1).all()
    totals = folds["fold"].value_counts()
    assert totals.max() - totals.min() <= 1
    pd.testing.assert_frame_equal(folds, make_folds(ids, n_folds=5, seed=7))
    assert not folds["fold"].equals(make_folds(ids, n_folds=5, seed=8)["fold"])


def test_committed_folds_reproduce(real_fixtures: Path, tmp_path: Path) -> None:
    """The committed folds.csv is exactly what the committed command writes from the real train ids."""
    out = tmp_path / "folds.csv"
    subprocess.run(
        [sys.executable, "-m", "data_prep.make_folds", "--ids-json", str(real_fixtures / "train_ids_by_organ.json"),
         "--out", str(out)],
        cwd=REPO, check=True, capture_output=True,
    )
    assert out.read_bytes() == (REPO / "folds.csv").read_bytes()
    committed = pd.read_csv(REPO / "folds.csv")
    ids = json.loads((real_fixtures / "train_ids_by_organ.json").read_text())
    assert sorted(committed["id"]) == sorted(i for v in ids.values() for i in v) and len(committed) == 351
