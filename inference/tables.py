"""Loaders for the competition CSVs that validate columns and types and say what is wrong."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from inference.organs import DATA_SOURCES, ORGANS

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
