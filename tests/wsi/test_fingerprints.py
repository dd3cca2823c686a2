"""Whole-slide resume trusts what it should: a cohort never skips a slide finished with other models, settings
or an edited slide file, and the work store's fingerprint covers the slide's size and mtime and config.json."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest


@pytest.fixture()
def one_slide(tmp_path: Path) -> Path:
    from data_prep.make_demo import make_slides

    return make_slides(tmp_path / "slides", 1, seed=3, side=1024)


def _cohort(csv: Path, run: Path, out: Path, *extra: str) -> list[str]:
    from inference.wsi.cli import main

    assert main(["--slides", str(csv), "--models", str(run), "--out", str(out), "--block", "512", "--device", "cpu",
                 *extra]) == 0
    return pd.read_csv(out / "cohort.csv")["status"].tolist()


@pytest.mark.slow
def test_a_cohort_rerun_with_other_settings_predicts_again(one_slide: Path, dark_run: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert _cohort(one_slide, dark_run, out) == ["done"]
    assert _cohort(one_slide, dark_run, out) == ["skipped"]  # same run: skipped
    capsys.readouterr()
    assert _cohort(one_slide, dark_run, out, "--fill-holes") == ["done"]  # other settings: predicted again
    assert "predicted again" in capsys.readouterr().out
    summary = next(out.glob("*_summary.json"))
    assert json.loads(summary.read_text())["fill_holes"] is True
    assert _cohort(one_slide, dark_run, out, "--fill-holes") == ["skipped"]


@pytest.mark.slow
def test_an_edited_slide_or_config_json_is_predicted_again(one_slide: Path, dark_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(dark_run, run)  # the session's checkpoint stays as it is
    out = tmp_path / "out"
    assert _cohort(one_slide, run, out) == ["done"]
    slide = one_slide.parent / pd.read_csv(one_slide)["slide"][0]
    stat = slide.stat()
    os.utime(slide, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the slide file re-written
    assert _cohort(one_slide, run, out) == ["done"]
    config = run / "fold0" / "config.json"
    data = json.loads(config.read_text())
    config.write_text(json.dumps({**data, "threshold": 0.9}))  # same weights, another config.json
    assert _cohort(one_slide, run, out) == ["done"]
    assert _cohort(one_slide, run, out) == ["skipped"]


@pytest.mark.slow
def test_a_single_slide_refuses_work_of_an_edited_slide_file(one_slide: Path, dark_run: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    from inference.wsi.cli import main

    slide = one_slide.parent / pd.read_csv(one_slide)["slide"][0]
    argv = ["--slide", str(slide), "--models", str(dark_run), "--out", str(tmp_path / "out"), "--block", "512",
            "--device", "cpu", "--mpp", "0.5"]
    assert main(argv) == 0
    stat = slide.stat()
    os.utime(slide, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    capsys.readouterr()
    assert main(argv) == 2
    assert "other models, settings or slide file" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
