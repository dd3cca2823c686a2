"""Cohorts: the slides CSV, skipping finished slides, and Ray with a worker killed mid-slide."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from inference.wsi.cohort import CohortError, load_cohort

ROOT = Path(__file__).resolve().parents[2]


def test_importing_inference_wsi_never_imports_ray() -> None:
    code = ("import sys, inference.wsi, inference.wsi.predict, inference.wsi.cohort, inference.wsi.cli; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_slides_csv_checks(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("slide,organ,mpp\nx/s1.ome.tif,kidney,0.5\n/abs/s2.svs,,\n")
    jobs = load_cohort(tmp_path / "a.csv")
    assert [j.stem for j in jobs] == ["s1", "s2"] and jobs[0].slide == tmp_path / "x" / "s1.ome.tif"
    assert jobs[0].mpp == 0.5 and jobs[1].mpp is None and jobs[1].organ == "" and jobs[1].slide == Path("/abs/s2.svs")
    for text, message in (("path,organ\na.tif,kidney\n", "needs a 'slide' column"),
                          ("slide,organ\na.tif,liver\n", "unknown organ"),
                          ("slide,organ\nx/a.tif,kidney\ny/a.tif,lung\n", "share output names")):
        (tmp_path / "b.csv").write_text(text)
        with pytest.raises(CohortError, match=message):
            load_cohort(tmp_path / "b.csv")


def _cli(csv: Path, run: Path, out: Path, *extra: str) -> int:
    from inference.wsi.cli import main

    return main(["--slides", str(csv), "--models", str(run), "--out", str(out), "--block", "512", "--device", "cpu",
                 *extra])


def test_cli_errors_for_cohorts(tmp_path: Path, dark_run: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "a.csv").write_text("slide,organ\nmissing.tif,kidney\n")
    with pytest.raises(SystemExit) as exit_info:
        _cli(tmp_path / "a.csv", dark_run, tmp_path / "o", "--mpp", "0.5")
    assert exit_info.value.code == 2 and "CSV's mpp and organ columns" in capsys.readouterr().err
    assert _cli(tmp_path / "a.csv", dark_run, tmp_path / "o") == 1  # the slide fails, the cohort is recorded
    table = pd.read_csv(tmp_path / "o" / "cohort.csv")
    assert list(table["status"]) == ["failed"] and "slide not found" in table["error"][0]


def _outputs(out: Path, stem: str) -> dict:
    return {
        "mask": tifffile.imread(out / f"{stem}_mask.tif"),
        "prob": tifffile.imread(out / f"{stem}_prob.tif"),
        "geojson": (out / f"{stem}.geojson").read_text(),
        "csv": (out / f"{stem}_ftus.csv").read_text(),
    }


@pytest.mark.slow
def test_cohort_on_ray_survives_a_killed_worker(
    tmp_path: Path, dark_run: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    ray = pytest.importorskip("ray")
    from data_prep.make_demo import make_slides
    from inference.wsi.cli import build_parser
    from inference.wsi.cohort import run_cohort, settings_from_args

    csv = make_slides(tmp_path / "slides", 3, seed=1, side=1536)  # slide, organ, mpp and more columns
    stems = [Path(s).name.split(".")[0] for s in pd.read_csv(csv)["slide"]]
    local = tmp_path / "local"
    assert _cli(csv, dark_run, local) == 0
    assert list(pd.read_csv(local / "cohort.csv")["status"]) == ["done"] * 3
    assert _cli(csv, dark_run, local) == 0  # a re-run skips every finished slide
    printed = capsys.readouterr().out
    assert printed.count("skipped (pass --overwrite") == 3 and "3 already done, 0 to predict" in printed
    assert list(pd.read_csv(local / "cohort.csv")["status"]) == ["skipped"] * 3

    out = tmp_path / "ray"
    killed: list[tuple[str, int, int]] = []
    stop = threading.Event()

    def kill_one_worker_mid_slide() -> None:
        """SIGKILL the first Ray worker seen with a slide's blocks partly done (its pid is in the work store)."""
        while not stop.is_set():
            for path in out.glob("*_work/state.json"):
                try:
                    state = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                pid = state.get("owner", {}).get("pid")
                if state["done"] and not state["finished"] and pid and pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    killed.append((path.parent.name, pid, len(state["done"])))
                    return
            time.sleep(0.01)

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, _temp_dir=ray_tmp,
             logging_level="WARNING", runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}})
    watcher = threading.Thread(target=kill_one_worker_mid_slide, daemon=True)
    watcher.start()
    try:
        args = build_parser().parse_args(["--slides", str(csv), "--models", str(dark_run), "--out", str(out),
                                          "--block", "512", "--device", "cpu"])
        table = run_cohort(load_cohort(csv), settings_from_args(args), engine="ray", max_retries=2)
    finally:
        stop.set()
        ray.shutdown()
    assert killed, "no worker was caught mid-slide"
    assert list(table["status"]) == ["done"] * 3
    for stem in stems:
        ray_out, local_out = _outputs(out, stem), _outputs(local, stem)
        np.testing.assert_array_equal(ray_out.pop("mask"), local_out.pop("mask"))
        np.testing.assert_array_equal(ray_out.pop("prob"), local_out.pop("prob"))
        assert ray_out == local_out
    done = json.loads((out / f"{killed[0][0]}" / "state.json").read_text())
    assert done["finished"] and done["owner"]["pid"] != killed[0][1]  # finished by the retried task
    again = run_cohort(load_cohort(csv), settings_from_args(args), engine="ray")  # no Ray needed: all finished
    assert list(again["status"]) == ["skipped"] * 3
