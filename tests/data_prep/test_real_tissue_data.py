"""The real-tissue benchmark's data: the PAS target and test blocks never overlap, and every file imports."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
REALDATA = REPO.parent / "shared" / "realdata"
sys.path.insert(0, str(REPO / "benchmarks"))


@pytest.fixture(scope="module")
def realdata() -> Path:
    if not (REALDATA / "kidney_pas_hubmap").is_dir():
        pytest.skip(f"real tissue not found at {REALDATA} (../shared/realdata is absent)")
    return REALDATA


def test_kidney_blocks_are_disjoint_and_complete(realdata: Path) -> None:
    from real_tissue import TARGET_BLOCK_MAX, kidney_items

    dab, target, test = kidney_items(realdata)
    assert len(dab) == 5 and all(i.annotation.is_file() for i in dab)
    numbers = {int(i.image.stem) for i in target}, {int(i.image.stem) for i in test}
    assert not numbers[0] & numbers[1] and len(numbers[0] | numbers[1]) == 58
    assert max(numbers[0]) <= TARGET_BLOCK_MAX < min(numbers[1])


def test_glas_track_imports_masks(realdata: Path, tmp_path: Path) -> None:
    from real_tissue import glas_items

    from data_prep.import_annotations import import_items

    train, test = glas_items(realdata, "train_"), glas_items(realdata, "testB_")
    assert (len(train), len(test)) == (85, 20)
    rows = import_items(test[:3], tmp_path, split="test", meta=dict(organ="largeintestine", data_source="Hubmap",
                                                                   pixel_size=0.62), progress=False)
    assert (rows["ftus"] > 0).all()
    solution = pd.read_csv(tmp_path / "test_solution.csv")
    assert len(solution) == 3 and solution["rle"].str.len().gt(0).all()
