"""The folds builder: balanced, seeded, and the committed folds.csv reproduces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from data_prep.make_folds import make_folds
from inference.organs import ORGANS

REPO = Path(__file__).resolve().parents[2]



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
