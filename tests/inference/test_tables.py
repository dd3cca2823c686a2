"""CSV validation messages and the organ table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
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




HEADER = "id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness"


@pytest.mark.parametrize("text,expected_notes", [
    ("ID,Organ,Data_Source,IMG_HEIGHT,img_width,Pixel_Size,tissue_thickness\n"
     "1,kidney,HPA,32,32,0.4,4\n2,spleen,Hubmap,40,40,0.4945,4\n", 0),  # upper-case header
    (" id , organ ,data_source, img_height,img_width,pixel_size,tissue_thickness \n"
     "1,kidney,HPA,32,32,0.4,4\n2,spleen,Hubmap,40,40,0.4945,4\n", 0),  # space-padded header
    (HEADER.replace(",", ", ") + "\n1, kidney, HPA, 32, 32, 0.4, 4\n2, spleen, Hubmap, 40, 40, 0.4945, 4\n", 0),
    (HEADER + "\n1,kidney,HPA,32,32,0.4,4,extra\n2,spleen,Hubmap,40,40,0.4945,4\n", 1),  # one long row
    (HEADER + "\n1,kidney,HPA,32,32,0.4\n2,spleen,Hubmap,40,40,0.4945,4\n", 1),  # one short row
    ("\ufeff" + HEADER + "\n1,kidney,HPA,32,32,0.4,4\n\n2,spleen,Hubmap,40,40,0.4945,4\n", 0),  # BOM, blank line
])
def test_awkward_csvs_give_every_row(tmp_path: Path, text: str, expected_notes: int) -> None:
    from inference.tables import load_test_lenient

    table, notes = load_test_lenient(_csv(tmp_path, text))
    assert table["id"].tolist() == ["1", "2"]
    assert table["organ"].tolist() == ["kidney", "spleen"] and table["data_source"].tolist() == ["HPA", "Hubmap"]
    assert table["img_height"].tolist() == [32, 40] and table["pixel_size"].tolist() == [0.4, 0.4945]
    assert len([n for n in notes if n[0].startswith("line")]) == expected_notes, notes
    assert all(n[0] == "line 2" for n in notes if n[0].startswith("line"))


def test_a_byte_that_is_not_utf8_is_replaced_with_a_warning(tmp_path: Path) -> None:
    from inference.tables import load_test_lenient

    path = tmp_path / "t.csv"
    path.write_bytes((HEADER + "\n1,kidney,HPA,32,32,0.4,4\n2,spl\xe9en,Hubmap,40,40,0.4945,4\n").encode("latin-1"))
    table, notes = load_test_lenient(path)
    assert table["id"].tolist() == ["1", "2"] and table["img_width"].tolist() == [32, 40]
    assert ("line 3", "bytes that are not UTF-8 replaced") in notes


def test_only_a_missing_id_column_is_fatal(tmp_path: Path) -> None:
    from inference.tables import load_sample_submission_lenient, load_test_lenient

    with pytest.raises(TableError, match="no 'id' column"):
        load_test_lenient(_csv(tmp_path, "image,organ\n1,kidney\n"))
    ids, notes = load_sample_submission_lenient(_csv(tmp_path, " ID , RLE\n10078, \n10079,,extra\n", "s.csv"))
    assert ids == ["10078", "10079"] and len(notes) == 1


def test_predict_writes_every_row_of_an_awkward_csv(demo_data: Path, tmp_path: Path) -> None:
    """End to end: a header in capitals with spaces, a long row, a latin-1 byte: every id, none without organ."""
    import shutil

    from checkpoints import ConstantNet, make_torchscript_checkpoint

    from inference import predict

    data = tmp_path / "data"
    shutil.copytree(demo_data / "test_images", data / "test_images")
    test = pd.read_csv(demo_data / "test.csv", dtype=str)
    lines = [", ".join(c.upper() for c in test.columns)]
    lines += [", ".join(r) + (", junk" if i == 0 else "") for i, r in enumerate(test.itertuples(index=False))]
    (data / "test.csv").write_bytes(("\n".join(lines) + "\n").encode().replace(b"HPA", b"HP\xffA", 1))
    model = make_torchscript_checkpoint(tmp_path / "m" / "fold0", ConstantNet([3.0]), tile=32, task="binary")
    out = tmp_path / "s.csv"
    assert predict.main(["--data-dir", str(data), "--models", str(model), "--out", str(out)]) == 0
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert sub["id"].tolist() == test["id"].tolist() and (sub["rle"] != "").all()


ROWS = ["1,kidney,HPA,32,32,0.4,4", "2,spleen,Hubmap,40,40,0.4945,4", "3,lung,HPA,48,48,0.4,4",
        "4,prostate,HPA,56,56,0.4,4"]


def test_a_field_over_csv_s_limit_is_read_with_every_row(tmp_path: Path) -> None:
    """A 200 KB field (csv's default limit is 128 KiB: `_csv.Error: field larger than field limit`)."""
    from inference.tables import load_sample_submission_lenient, load_test_lenient

    rows = ROWS.copy()
    rows[1] = rows[1][: -len("4")] + "9" * 200_000  # tissue_thickness
    table, notes = load_test_lenient(_csv(tmp_path, HEADER + "\n" + "\n".join(rows) + "\n"))
    assert table["id"].tolist() == ["1", "2", "3", "4"] and table["organ"].tolist()[1] == "spleen"
    ids, _ = load_sample_submission_lenient(_csv(tmp_path, "id,rle\n1,\n2," + "1 2 " * 60_000 + "\n3,\n", "s.csv"))
    assert ids == ["1", "2", "3"]
    import csv

    assert csv.field_size_limit() == 131072  # raised only while reading


@pytest.mark.parametrize("broken", [
    '2,"spleen,Hubmap,40,40,0.4945,4',  # a quote never closed: non-strict csv swallows every row after it
    '2,spleen,"Hubmap,40,40,0.4945,4',
    '2,"spleen" ,Hubmap,40,40,0.4945,4',  # text after a closing quote
])
def test_a_broken_quote_costs_only_its_own_line(tmp_path: Path, broken: str) -> None:
    from inference.tables import load_test_lenient

    rows = ROWS.copy()
    rows[1] = broken
    rows[3] = '4,"prostate",HPA,56,56,0.4,4'  # a later quote that would close the broken one
    table, notes = load_test_lenient(_csv(tmp_path, HEADER + "\n" + "\n".join(rows) + "\n"))
    assert table["id"].tolist() == ["1", "2", "3", "4"]
    assert table["organ"].tolist() == ["kidney", "spleen", "lung", "prostate"]
    assert table["img_height"].tolist() == [32, 40, 48, 56] and table["pixel_size"].tolist()[1] == 0.4945
    broken_notes = [n for n in notes if n[0].startswith("line")]
    assert [n[0] for n in broken_notes] == ["line 3"] and "quote" in broken_notes[0][1], notes


def test_the_strict_loaders_name_a_broken_quote(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="not readable as CSV"):
        load_test(_csv(tmp_path, HEADER + '\n1,"kidney,HPA,32,32,0.4,4\n'))


def test_sample_submission_supplies_the_ids_test_csv_lost(tmp_path: Path) -> None:
    from inference.tables import load_test_lenient

    _csv(tmp_path, "id,rle\n1,\n2,\n3,\n4,\n", "sample_submission.csv")
    table, notes = load_test_lenient(_csv(tmp_path, HEADER + "\n" + ROWS[2] + "\n" + ROWS[0] + "\n", "test.csv"))
    assert table["id"].tolist() == ["3", "1", "2", "4"]  # test.csv's order, then the lost ids in sample order
    assert table["organ"].tolist() == ["lung", "kidney", "", ""] and table["img_height"].tolist() == [48, 32, 0, 0]
    assert table["pixel_size"].isna().tolist() == [False, False, True, True]
    assert [i for i, n in notes if "not in the test table" in n] == ["2", "4"]


def test_a_sample_submission_of_another_test_set_adds_nothing(tmp_path: Path) -> None:
    """The visible sample_submission.csv beside a swapped-in hidden test.csv shares no id: adding its id would
    add a row Kaggle rejects."""
    from inference.tables import load_test_lenient

    _csv(tmp_path, "id,rle\n10078,\n", "sample_submission.csv")
    table, notes = load_test_lenient(_csv(tmp_path, HEADER + "\n" + "\n".join(ROWS) + "\n", "test.csv"))
    assert table["id"].tolist() == ["1", "2", "3", "4"] and any("shares no id" in n for _, n in notes)
    train, _ = load_test_lenient(_csv(tmp_path, HEADER + "\n" + ROWS[0] + "\n", "train.csv"))
    assert train["id"].tolist() == ["1"]  # only a test.csv is checked against the sample
