"""Loaders for the competition CSVs that validate columns and types and say what is wrong."""

from __future__ import annotations

import contextlib
import csv
import itertools
import re
from collections.abc import Iterator
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
    try:
        df = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"rle": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, csv.Error) as exc:
        raise TableError(f"{path}: not readable as CSV ({' '.join(str(exc).split())})") from exc
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


def _split_at_commas(line: str) -> list[str]:
    """A line's fields split at every comma, quote characters dropped: how a line with a broken quote is read."""
    return [v.replace('"', "") for v in line.rstrip("\r\n").split(",")]


@contextlib.contextmanager
def _field_limit(limit: int) -> Iterator[None]:
    """csv's field size limit raised to at least `limit` for the block (the default 128 KiB refuses long fields)."""
    before = csv.field_size_limit()
    csv.field_size_limit(max(before, limit))
    try:
        yield
    finally:
        csv.field_size_limit(before)


def _records(lines: list[str], notes: list[tuple[str, str]]) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every record of a CSV's physical lines; a broken quote costs only its own line.

    Strict quoting: a quote left open (or closed in the middle of a field) is a csv.Error, and so is a record that
    spans lines (no competition table has a field with a line break: a quote opened there swallows the rows
    after it). Such a line is read alone by splitting at its commas, with a warning naming it, and reading goes
    on with the next line. The field limit is raised to the file's size, so a long field is read whole.
    """
    records: list[tuple[int, list[str]]] = []
    pos = 0
    with _field_limit(sum(map(len, lines)) + 1):
        while pos < len(lines):
            reader = csv.reader(itertools.islice(lines, pos, None), skipinitialspace=True, strict=True)
            base, read, broken = pos, 0, None
            try:
                for values in reader:
                    first, read = base + read, reader.line_num
                    if base + read - first > 1:
                        broken = first, "a quoted field runs over a line break (a quote never closed?)"
                        break
                    records.append((first + 1, values))
                else:
                    pos = len(lines)
            except csv.Error as exc:
                broken = base + read, f"not readable as CSV ({exc}; a quote never closed?)"
            if broken is not None:
                first, why = broken
                notes.append((f"line {first + 1}", f"{why}: this line read by splitting at commas, quotes dropped; "
                                                   "the lines after it read on their own"))
                records.append((first + 1, _split_at_commas(lines[first])))
                pos = first + 1
    return records


def read_csv_lenient(path: str | Path) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Any CSV, as a table of stripped strings, and (where, message) warnings; a damaged line never costs another.

    Header names are stripped and lower-cased (a BOM is dropped); bytes that are not UTF-8 are replaced (U+FFFD);
    spaces around values are stripped; a short row is padded with empty values and a long one truncated; a line
    the csv module cannot read (a quote never closed, a field over csv's limit) is read alone (see _records).
    Each repair is a warning naming the line. Only a missing or unreadable file, or one without an `id` column,
    is an error (TableError).
    """
    path = Path(path)
    if not path.is_file():
        raise TableError(f"CSV not found: {path}")
    notes: list[tuple[str, str]] = []
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            lines = f.readlines()
    except OSError as exc:
        raise TableError(f"{path}: cannot be read ({exc})") from exc
    records = _records(lines, notes)
    while records and not any(v.strip() for v in records[0][1]):
        records.pop(0)
    if not records:
        raise TableError(f"{path}: empty file, no 'id' column")
    head, names = records[0]
    header = [h.strip().lower() for h in names]
    if "id" not in header:
        raise TableError(f"{path}: no 'id' column; found {header}")
    if any("\ufffd" in h for h in names):
        notes.append((f"line {head}", "bytes that are not UTF-8 in the header replaced"))
    rows = []
    for number, values in records[1:]:
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
                                            f"{_shorten(values[len(header):])} dropped"))
            values = values[: len(header)]
        rows.append([v.strip() for v in values])
    df = pd.DataFrame(rows, columns=header, dtype=object)
    df = df.loc[:, ~df.columns.duplicated()]
    return df.replace("", np.nan), notes


def _shorten(values: list[str], limit: int = 200) -> str:
    """repr of values cut to `limit` characters (a warning must not repeat a 200 KB field)."""
    text = repr(values)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def load_sample_submission_lenient(path: str | Path) -> tuple[list[str], list[tuple[str, str]]]:
    """The ids of sample_submission.csv in order, read as leniently as test.csv (the kernel's last resort)."""
    df, notes = read_csv_lenient(path)
    return [i for i in df["id"].fillna("").astype(str) if i], notes


def _add_sample_ids(df: pd.DataFrame, sample: Path, notes: list[tuple[str, str]]) -> pd.DataFrame:
    """df plus a row (id only) for every id of `sample` that df lacks, at the end in sample order, each warned.

    Only when the two tables share an id or df has none: a sample_submission.csv that shares no id with a
    non-empty test.csv belongs to another test set (the visible one beside a swapped-in hidden test), and
    adding its ids would add rows Kaggle rejects. A missing or unreadable sample is no error.
    """
    if not sample.is_file():
        return df
    try:
        sample_ids, sample_notes = load_sample_submission_lenient(sample)
    except TableError as exc:
        notes.append(("*", f"{sample.name} cannot be used to check the ids: {exc}"))
        return df
    notes.extend((f"{sample.name} {where}", note) for where, note in sample_notes)
    have, known = set(df["id"]), set(sample_ids)
    if have and not have & known:
        notes.append(("*", f"{sample.name} shares no id with the test table: not used to check the ids"))
        return df
    extra = [i for i in df["id"] if i not in known]
    if extra and known:
        notes.append(("*", f"{len(extra)} id(s) not in {sample.name}, predicted anyway: {extra[:5]}"))
    lost = [i for i in dict.fromkeys(sample_ids) if i not in have]
    for image_id in lost:
        notes.append((image_id, f"in {sample.name} but not in the test table (a damaged line?): added at the end "
                                "with only its id"))
    if not lost:
        return df
    added = pd.DataFrame({c: lost if c == "id" else [np.nan] * len(lost) for c in df.columns}, dtype=object)
    return pd.concat([df, added], ignore_index=True)


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
    - a missing or non-positive img_height / img_width becomes 0: the image's own size is used;
    - a test.csv is checked against the sample_submission.csv beside it (see _add_sample_ids): an id the table
      lost (a damaged line) is added at the end, in sample order, as a row with only its id.
    """
    path = Path(path)
    df, notes = read_csv_lenient(path)
    df["id"] = df["id"].fillna("").str.strip()
    for i in df.index[df["id"] == ""]:
        notes.append((f"row {i + 2}", "no id: row skipped"))
    df = df[df["id"] != ""].reset_index(drop=True)
    if path.name.lower() == "test.csv":
        df = _add_sample_ids(df, path.with_name("sample_submission.csv"), notes)
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
