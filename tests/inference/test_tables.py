"""CSV validation messages and the organ table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.organs import CLASSES, ORGANS, class_index, pixel_size
from inference.tables import TableError, load_submission, load_test, load_train

REPO = Path(__file__).resolve().parents[2]
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


