"""Loaders for the competition CSVs that validate columns and types and say what is wrong."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd

from inference.organs import DATA_SOURCES, ORGANS, valid_pixel_size

TEST_COLUMNS = ("id", "organ", "data_source", "img_height", "img_width", "pixel_size", "tissue_thickness")
TRAIN_COLUMNS = (*TEST_COLUMNS, "rle", "age", "sex")
SUBMISSION_COLUMNS = ("id", "rle")
SOLUTION_COLUMNS = ("id", "organ", "img_height", "img_width", "rle")

_INT_COLUMNS = ("id", "img_height", "img_width")
_FLOAT_COLUMNS = ("pixel_size", "tissue_thickness", "age")


class TableError(ValueError):
    """A competition CSV is missing columns or has values of the wrong type."""


def validate(df: pd.DataFrame, required: tuple[str, ...], name: str) -> pd.DataFrame:
    """Check required columns and their types; return a copy with normalised dtypes."""
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise TableError(f"{name}: missing column(s) {missing}; found {list(df.columns)}")
    df = df.copy()
    for col in (c for c in _INT_COLUMNS if c in required):
        values = pd.to_numeric(df[col], errors="coerce")
        bad = df.loc[values.isna() | (values != values.round()), col]
        if len(bad):
            raise TableError(f"{name}: column {col!r} must hold integers; bad value(s) {bad.head(5).tolist()}")
        df[col] = values.astype("int64")
    for col in (c for c in _FLOAT_COLUMNS if c in required):
        values = pd.to_numeric(df[col], errors="coerce")
        bad = df.loc[values.isna() & df[col].notna(), col]
        if len(bad):
            raise TableError(f"{name}: column {col!r} must be numeric; bad value(s) {bad.head(5).tolist()}")
        df[col] = values.astype("float64")
    if "organ" in required:
        bad = sorted(set(df["organ"]) - set(ORGANS))
        if bad:
            raise TableError(f"{name}: unknown organ(s) {bad}; expected {list(ORGANS)}")
    if "data_source" in required:
        bad = sorted(set(df["data_source"]) - set(DATA_SOURCES))
        if bad:
            raise TableError(f"{name}: unknown data_source(s) {bad}; expected {list(DATA_SOURCES)}")
    if "rle" in df.columns:
        df["rle"] = df["rle"].astype(object).fillna("").astype(str)
    dup = df.loc[df["id"].duplicated(), "id"]
    if len(dup):
        raise TableError(f"{name}: duplicate id(s) {dup.head(5).tolist()}")
    return df


def _read(path: str | Path, required: tuple[str, ...]) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise TableError(f"CSV not found: {path}")
    df = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"rle": str})
    return validate(df, required, str(path))


def load_train(path: str | Path) -> pd.DataFrame:
    """Read and validate train.csv."""
    return _read(path, TRAIN_COLUMNS)


def load_test(path: str | Path) -> pd.DataFrame:
    """Read and validate test.csv."""
    return _read(path, TEST_COLUMNS)


def load_submission(path: str | Path) -> pd.DataFrame:
    """Read and validate a submission or sample_submission.csv (id, rle; empty rle allowed)."""
    return _read(path, SUBMISSION_COLUMNS)


def load_solution(path: str | Path) -> pd.DataFrame:
    """Read and validate a ground-truth table for scoring (id, organ, img_height, img_width, rle)."""
    return _read(path, SOLUTION_COLUMNS)


def _normalise(value: object, known: tuple[str, ...]) -> str | None:
    """The known name a value spells, ignoring case, spaces, '-' and '_' (None when it spells none)."""
    key = re.sub(r"[\s_\-]", "", str(value)).lower()
    return next((k for k in known if k.lower() == key), None)


def read_csv_lenient(path: str | Path) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Any CSV the csv module can read row by row, as a table of stripped strings, and (where, message) warnings.

    Header names are stripped and lower-cased (a BOM is dropped); bytes that are not UTF-8 are replaced (U+FFFD);
    spaces around values are stripped; a short row is padded with empty values and a long one truncated. Each
    repair is a warning naming the line. Only a missing file or a file without an `id` column is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise TableError(f"CSV not found: {path}")
    notes: list[tuple[str, str]] = []
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        lines = list(csv.reader(f, skipinitialspace=True))
    while lines and not any(v.strip() for v in lines[0]):
        lines.pop(0)
    if not lines:
        raise TableError(f"{path}: empty file, no 'id' column")
    header = [h.strip().lower() for h in lines[0]]
    if "id" not in header:
        raise TableError(f"{path}: no 'id' column; found {header}")
    if any("\ufffd" in h for h in lines[0]):
        notes.append(("line 1", "bytes that are not UTF-8 in the header replaced"))
    rows = []
    for number, values in enumerate(lines[1:], start=2):
        if not any(v.strip() for v in values):
            continue  # blank line
        if any("\ufffd" in v for v in values):
            notes.append((f"line {number}", "bytes that are not UTF-8 replaced"))
        if len(values) < len(header):
            notes.append((f"line {number}", f"{len(values)} field(s) for {len(header)} columns: padded with empty "
                                            "values"))
            values = values + [""] * (len(header) - len(values))
        elif len(values) > len(header):
            notes.append((f"line {number}", f"{len(values)} field(s) for {len(header)} columns: the extra "
                                            f"{values[len(header):]} dropped"))
            values = values[: len(header)]
        rows.append([v.strip() for v in values])
    df = pd.DataFrame(rows, columns=header, dtype=object)
    df = df.loc[:, ~df.columns.duplicated()]
    return df.replace("", np.nan), notes


def load_sample_submission_lenient(path: str | Path) -> tuple[list[str], list[tuple[str, str]]]:
    """The ids of sample_submission.csv in order, read as leniently as test.csv (the kernel's last resort)."""
    df, notes = read_csv_lenient(path)
    return [i for i in df["id"].fillna("").astype(str) if i], notes


def load_test_lenient(path: str | Path) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Read test.csv (or train.csv) for the submission loop: bad values become warnings, never an error.

    Returns the table and (id or "line N", message) warnings. Only a missing file or a missing id column is an
    error (without ids there is no submission to write). The file is read by read_csv_lenient. Fallbacks:
    - ids are kept as the CSV spells them (the submission repeats them); rows without an id are dropped;
    - organ / data_source spelled another way (`HuBMAP`, `Large_Intestine`) are normalised; unknown ones are
      kept as given: inference then uses no organ threshold, no organ class, no organ min-area, and for a
      missing pixel_size the Hubmap value of the organ (unknown organ: no pixel-size rescaling);
    - a missing, non-numeric, NaN, <= 0 or absurd pixel_size becomes NaN (inference.organs.image_pixel_size
      chooses the organ's value); a missing column counts as all-missing;
    - a missing or non-positive img_height / img_width becomes 0: the image's own size is used.
    """
    df, notes = read_csv_lenient(path)
    df["id"] = df["id"].fillna("").str.strip()
    for i in df.index[df["id"] == ""]:
        notes.append((f"row {i + 2}", "no id: row skipped"))
    df = df[df["id"] != ""].reset_index(drop=True)
    for dup in df.loc[df["id"].duplicated(), "id"].unique():
        notes.append((dup, "id appears more than once: every row is predicted"))
    for col in ("organ", "data_source"):
        if col not in df.columns:
            notes.append(("*", f"no {col!r} column: every row treated as unknown {col}"))
            df[col] = ""
        df[col] = df[col].fillna("")
    for col, known in (("organ", ORGANS), ("data_source", DATA_SOURCES)):
        for i, value in df[col].items():
            name = _normalise(value, known)
            if name is None:
                notes.append((df.at[i, "id"], f"unknown {col} {value!r} (expected one of {list(known)})"))
            elif name != value:
                notes.append((df.at[i, "id"], f"{col} {value!r} read as {name!r}"))
                df.at[i, col] = name

    raw = df["pixel_size"] if "pixel_size" in df.columns else pd.Series("", index=df.index)
    values = pd.to_numeric(raw, errors="coerce")
    for i, value in values.items():
        if not valid_pixel_size(value):
            shown = "missing" if pd.isna(raw[i]) else f"{raw[i]!r} unusable"
            notes.append((df.at[i, "id"], f"pixel_size {shown}: the organ's pixel size is used"))
            values[i] = np.nan
    df["pixel_size"] = values.astype("float64")
    for col in ("img_height", "img_width"):
        raw = df[col] if col in df.columns else pd.Series("", index=df.index)
        values = pd.to_numeric(raw, errors="coerce")
        bad = values.isna() | (values <= 0) | (values != values.round())
        for i in df.index[bad]:
            shown = "missing" if pd.isna(raw[i]) else f"{raw[i]!r} unusable"
            notes.append((df.at[i, "id"], f"{col} {shown}: the image's own size is used"))
        df[col] = values.where(~bad, 0).astype("int64")
    return df, notes


def load_folds(path: str | Path) -> dict[str, int]:
    """id -> fold of a folds.csv (the seeded split data_prep.make_folds writes; ids as the CSV spells them).

    The one reader of the split, for the tile builder and inference.predict --folds.
    """
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path} not found: write it with python -m data_prep.make_folds")
    df = pd.read_csv(path, dtype=str)
    if not {"id", "fold"} <= set(df.columns):
        raise TableError(f"{path}: needs columns id, fold; found {list(df.columns)}")
    try:
        return {i.strip(): int(f) for i, f in zip(df["id"], df["fold"], strict=True)}
    except (TypeError, ValueError) as exc:
        raise TableError(f"{path}: every row needs an id and an integer fold ({exc})") from exc
