"""Thresholds per data source and organ: the file format, inference.predict using them, tune_thresholds --by-source."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from checkpoints import ConstantNet, make_torchscript_checkpoint

from inference import predict, tune_thresholds
from inference.engine.ensemble import load_thresholds
from inference.organs import DATA_SOURCES, ORGANS
from inference.rle import decode
from inference.tables import load_submission
from inference.thresholds import read_thresholds, thresholds_for


def test_read_thresholds_flat_nested_and_mixed(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"kidney": 0.3}))
    assert read_thresholds(path) == ({"kidney": 0.3}, {})
    path.write_text(json.dumps({"lung": 0.5, "HPA": {"kidney": 0.3}, "Hubmap": {"lung": 0.06}}))
    organs, by_source = read_thresholds(path)
    assert organs == {"lung": 0.5} and by_source == {"HPA": {"kidney": 0.3}, "Hubmap": {"lung": 0.06}}
    assert thresholds_for(organs, by_source, "Hubmap") == {"lung": 0.06}
    assert thresholds_for(organs, by_source, "HPA") == {"lung": 0.5, "kidney": 0.3}
    assert thresholds_for(organs, by_source, "unknown") == {"lung": 0.5}
    with pytest.raises(ValueError, match="need each image's data_source"):
        load_thresholds(path)  # inference.wsi has no data source to choose with
    for bad, match in (({"Hubmap": 0.3}, "must map organ"), ({"Hubmap": {"liver": 0.2}}, "unknown organ"),
                       ({"HPA": {"lung": 1.0}}, r"in \(0, 1\)"), ({"HuBMAP": {"lung": 0.1}}, "unknown organ")):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            read_thresholds(path)


def test_predict_uses_the_rows_source_thresholds(demo_data: Path, tmp_path: Path) -> None:
    # probability 0.4 everywhere: a cut-off of 0.3 keeps every pixel, 0.5 none
    run = make_torchscript_checkpoint(tmp_path / "const" / "fold0", ConstantNet([math.log(0.4 / 0.6)]),
                                      task="binary", tile=32)
    thresholds = tmp_path / "t.json"
    thresholds.write_text(json.dumps({"HPA": {o: 0.3 for o in ORGANS}, "Hubmap": {o: 0.5 for o in ORGANS}}))
    out = tmp_path / "sub.csv"
    assert predict.main(["--data-dir", str(demo_data), "--models", str(run), "--out", str(out),
                         "--thresholds", str(thresholds)]) == 0
    test = pd.read_csv(demo_data / "test.csv")
    sub = load_submission(out).merge(test, on="id")
    assert set(sub["data_source"]) == {"HPA", "Hubmap"}
    for r in sub.itertuples():
        mask = decode(r.rle, r.img_height, r.img_width)
        assert mask.all() if r.data_source == "HPA" else not mask.any()


@pytest.fixture()
def oof(demo_data: Path, tmp_path: Path) -> Path:
    """Noisy probability maps of the demo test images: truth x 0.5 + noise, lower on Hubmap rows (a shifted domain)."""
    folder = tmp_path / "oof"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for r in pd.read_csv(demo_data / "test_solution.csv").itertuples():
        truth = decode(r.rle, r.img_height, r.img_width).astype(np.float32)
        gain = 0.5 if r.data_source == "HPA" else 0.2
        prob = np.clip(truth * gain + rng.uniform(0, 0.3, truth.shape), 0, 1)
        np.save(folder / f"{r.id}.npy", prob.astype(np.float16))
    return folder


def test_tune_thresholds_by_source_writes_both_sources(demo_data: Path, oof: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "by_source.json"
    assert tune_thresholds.main(["--oof", str(oof), "--solution", str(demo_data / "test_solution.csv"),
                                 "--out", str(out), "--by-source", "--min-source-images", "1"]) == 0
    written = json.loads(out.read_text())
    assert sorted(written) == sorted(DATA_SOURCES)
    solution = pd.read_csv(demo_data / "test_solution.csv")
    for source in DATA_SOURCES:
        organs = set(solution.loc[solution["data_source"] == source, "organ"])
        assert organs <= set(written[source])
    # the Hubmap maps are weaker (0.2 + noise up to 0.3): their cut-off sits below the HPA one
    hubmap, hpa = written["Hubmap"], written["HPA"]
    shared = set(hubmap) & set(hpa) & set(solution.loc[solution["data_source"] == "Hubmap", "organ"]) & set(
        solution.loc[solution["data_source"] == "HPA", "organ"])
    assert shared and all(hubmap[o] < hpa[o] for o in shared)
    text = capsys.readouterr().out
    assert "per data source" in text and "Hubmap" in text
    organs, by_source = read_thresholds(out)  # what inference.predict reads
    assert organs == {} and by_source == written


def test_by_source_falls_back_to_the_organ_threshold(demo_data: Path, oof: Path, tmp_path: Path) -> None:
    flat, nested = tmp_path / "flat.json", tmp_path / "nested.json"
    solution = str(demo_data / "test_solution.csv")
    assert tune_thresholds.main(["--oof", str(oof), "--solution", solution, "--out", str(flat)]) == 0
    assert tune_thresholds.main(["--oof", str(oof), "--solution", solution, "--out", str(nested),
                                 "--by-source", "--min-source-images", "5"]) == 0
    organ = json.loads(flat.read_text())
    assert json.loads(nested.read_text()) == {source: organ for source in DATA_SOURCES}


def test_by_source_needs_a_data_source_column(demo_data: Path, oof: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    solution = tmp_path / "solution.csv"
    pd.read_csv(demo_data / "test_solution.csv").drop(columns="data_source").to_csv(solution, index=False)
    assert tune_thresholds.main(["--oof", str(oof), "--solution", str(solution), "--out", str(tmp_path / "o.json"),
                                 "--by-source"]) == 2
    assert "data_source column" in capsys.readouterr().err
