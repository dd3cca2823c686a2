"""The kernel's supervisor: a deadline and a hung-row watchdog on the child, progress counted by `done` records,
submission.csv from the journal in order, and journals of another run ignored. Children are fake scripts; time is
a fake clock moved by the supervisor's own sleep calls."""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from inference.journal import VERSION
from inference.predict import run_supervised, write_from_journal

COLUMNS = "id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness"

# A stand-in for `python -m inference.predict ARGV --journal J ...`: its n-th start runs ACTIONS[n] (the last
# one once they run out), each a list of ("append", record) / ("sleep", seconds) / ("exit", status).
FAKE_CHILD = """#!{python}
import json, sys, time
argv = sys.argv
journal = argv[argv.index("--journal") + 1]
plan = json.load(open(argv[argv.index("--plan") + 1]))
count_file = plan["count"]
try:
    n = int(open(count_file).read())
except FileNotFoundError:
    n = 0
open(count_file, "w").write(str(n + 1))
for kind, value in plan["actions"][min(n, len(plan["actions"]) - 1)]:
    if kind == "append":
        with open(journal, "a") as f:
            f.write(json.dumps(value) + "\\n")
    elif kind == "sleep":
        time.sleep(value)
    else:
        sys.exit(value)
"""


class FakeTime:
    """clock() and sleep() for run_supervised: each sleep moves the clock by `step` (and yields the CPU briefly).

    started: a file the child writes when it runs; the fake clock does not move before it exists (up to 60 s of
    real time), so a child slow to start on a loaded machine is never killed before it ran.
    """

    def __init__(self, step: float, started: Path | None = None) -> None:
        self.now, self.step, self.started = 0.0, step, started

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        time.sleep(0.02)
        waited = time.monotonic()
        while self.started is not None and not self.started.exists() and time.monotonic() - waited < 60:
            time.sleep(0.02)
        self.now += self.step


def _child(tmp_path: Path, actions: list[list[list]]) -> tuple[str, list[str], Path]:
    """(fake python, argv naming its plan, the file counting its starts)."""
    python = tmp_path / "python"
    python.write_text(FAKE_CHILD.format(python=sys.executable))
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    plan, count = tmp_path / "plan.json", tmp_path / "starts"
    plan.write_text(json.dumps({"count": str(count), "actions": actions}))
    return str(python), ["--plan", str(plan)], count


def _data(tmp_path: Path, n: int = 3) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.csv").write_text(COLUMNS + "\n" + "".join(f"{i},kidney,HPA,32,32,0.4,4\n" for i in range(1, n + 1)))
    return data


def _journal(path: Path, records: list[dict], fingerprint: str = "run") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in [{"journal": VERSION, "fingerprint": fingerprint},
                                                            *records]))
    return path


def _done(row: int, rle: str, seconds: float = 1.0) -> dict:
    return {"event": "done", "row": row, "id": str(row + 1), "rle": rle, "status": "ok", "seconds": seconds}


def test_a_child_past_the_deadline_is_killed_and_every_row_is_written(tmp_path: Path) -> None:
    data = _data(tmp_path)
    journal = _journal(tmp_path / "predict.journal", [_done(0, "1 5"), _done(1, "3 2")])
    python, argv, starts = _child(tmp_path, [[["sleep", 600]]])  # hangs (a stalled read, a deadlock)
    fake = FakeTime(step=1.0, started=starts)
    status = run_supervised(argv, journal, python=python, deadline=5.0, clock=fake.clock, sleep=fake.sleep)
    assert status == -9 and starts.read_text() == "1"  # killed, and no second child after the deadline
    assert 5.0 <= fake.now < 10.0
    sub = write_from_journal(data, journal, tmp_path / "submission.csv")
    assert sub["id"].tolist() == ["1", "2", "3"] and sub["rle"].tolist() == ["1 5", "3 2", ""]
    written = pd.read_csv(tmp_path / "submission.csv", dtype=str, keep_default_na=False)
    assert written["rle"].tolist() == ["1 5", "3 2", ""]


def test_a_child_that_hangs_during_start_up_is_stopped_by_the_deadline(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A restarted child hangs before its first row (loading models, a stalled import): no row is claimed, so the
    hung-row watchdog cannot see it, though earlier rows were measured; the deadline kills it and every row of
    test.csv is written, the finished ones from the journal."""
    from inference.submission.supervisor import row_limit

    data = _data(tmp_path, n=4)
    journal = _journal(tmp_path / "predict.journal", [_done(0, "1 5", seconds=1.0), _done(1, "3 2", seconds=1.0)])
    assert row_limit(journal) is not None  # a measured row: the watchdog is armed, and still never fires
    python, argv, starts = _child(tmp_path, [[["sleep", 600]]])  # hangs before claiming a row
    fake = FakeTime(step=100.0, started=starts)
    with caplog.at_level(logging.ERROR):
        status = run_supervised(argv, journal, python=python, deadline=3000.0, clock=fake.clock, sleep=fake.sleep)
    assert status == -9 and starts.read_text() == "1"
    assert 3000.0 <= fake.now < 3200.0  # past row_limit (600 s) many times over: only the deadline stopped it
    messages = [r.getMessage() for r in caplog.records]
    assert any("killed at the deadline" in m for m in messages) and not any("has run" in m for m in messages)
    sub = write_from_journal(data, journal, tmp_path / "submission.csv")
    assert sub["id"].tolist() == ["1", "2", "3", "4"] and sub["rle"].tolist() == ["1 5", "3 2", "", ""]
    assert pd.read_csv(tmp_path / "submission.csv", dtype=str, keep_default_na=False).equals(sub)


def test_a_time_budget_sets_a_deadline_with_grace(tmp_path: Path) -> None:
    from inference.engine.budget import CHILD_GRACE_S

    journal = _journal(tmp_path / "predict.journal", [])
    python, argv, _ = _child(tmp_path, [[["sleep", 600]]])
    fake = FakeTime(step=10.0)
    assert run_supervised(argv, journal, time_budget=100.0, python=python, clock=fake.clock, sleep=fake.sleep) == -9
    assert 100.0 + CHILD_GRACE_S <= fake.now < 100.0 + CHILD_GRACE_S + 20.0


def test_a_hung_row_is_killed_and_the_next_child_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    journal = _journal(tmp_path / "predict.journal", [_done(0, "1 5", seconds=2.0)])
    python, argv, starts = _child(tmp_path, [
        [["append", {"event": "claim", "row": 1, "id": "2"}], ["sleep", 600]],  # hangs on row 1
        [["append", {"event": "done", "row": 1, "id": "2", "rle": "", "status": "crashed"}],
         ["append", _done(2, "7 1")], ["exit", 0]],
    ])
    fake = FakeTime(step=100.0, started=starts)
    with caplog.at_level(logging.ERROR):
        status = run_supervised(argv, journal, python=python, clock=fake.clock, sleep=fake.sleep)
    assert status == 0 and starts.read_text() == "2"
    assert any("id 2 (row 1) has run" in r.getMessage() for r in caplog.records)
    sub = write_from_journal(_data(tmp_path), journal, tmp_path / "submission.csv")
    assert sub["rle"].tolist() == ["1 5", "", "7 1"]


def test_claim_and_release_records_are_not_progress(tmp_path: Path) -> None:
    """AdaBN claims and releases rows at every start: a child that then dies the same way is not restarted 25 times."""
    journal = _journal(tmp_path / "predict.journal", [])
    adabn = [["append", {"event": "claim", "row": 0, "id": "1"}], ["append", {"event": "release", "row": 0}]]
    python, argv, starts = _child(tmp_path, [[*adabn, ["exit", 1]]])
    fake = FakeTime(step=1.0, started=starts)
    assert run_supervised(argv, journal, python=python, clock=fake.clock, sleep=fake.sleep) == 1
    assert starts.read_text() == "1"


def test_a_child_that_adds_done_records_is_restarted(tmp_path: Path) -> None:
    journal = _journal(tmp_path / "predict.journal", [])
    python, argv, starts = _child(tmp_path, [[["append", _done(0, "1 1")], ["exit", -9]],
                                             [["append", _done(1, "2 1")], ["append", _done(2, "3 1")], ["exit", 0]]])
    fake = FakeTime(step=1.0, started=starts)
    assert run_supervised(argv, journal, python=python, clock=fake.clock, sleep=fake.sleep) == 0
    assert starts.read_text() == "2"


def test_a_foreign_journal_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = _data(tmp_path)
    journal = _journal(tmp_path / "predict.journal", [_done(0, "1 5"), _done(1, "3 2")], fingerprint="other run")
    with caplog.at_level(logging.WARNING):
        sub = write_from_journal(data, journal, tmp_path / "s.csv", fingerprint="this run")
    assert sub["id"].tolist() == ["1", "2", "3"] and sub["rle"].tolist() == ["", "", ""]
    assert any("written by another run" in r.getMessage() for r in caplog.records)
    assert write_from_journal(data, journal, tmp_path / "s.csv", fingerprint="other run")["rle"].tolist() == [
        "1 5", "3 2", ""]


def test_the_child_counts_its_start_up_against_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    """A child spawned long ago (interpreter, imports) has its budget spent: every row skipped, none decoded."""
    import numpy as np
    from checkpoints import ConstantNet, make_torchscript_checkpoint

    from inference.io import write_image
    from inference.predict import main
    from inference.submission import images
    from inference.submission.supervisor import SPAWNED_AT_ENV

    data = _data(tmp_path)
    (data / "test_images").mkdir()
    for i in (1, 2, 3):
        write_image(data / "test_images" / f"{i}.tiff", np.full((32, 32, 3), 120, np.uint8))
    model = make_torchscript_checkpoint(tmp_path / "m" / "fold0", ConstantNet([3.0]), tile=32, task="binary")
    reads: list[object] = []
    real = images.read_image
    monkeypatch.setattr(images, "read_image", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    monkeypatch.setenv(SPAWNED_AT_ENV, repr(time.time() - 10_000.0))
    assert main(["--data-dir", str(data), "--models", str(model), "--out", str(tmp_path / "s.csv"),
                 "--time-budget", "100"]) == 0
    assert reads == []  # the plan is asked before an image is decoded
    assert "3 image(s) skipped" in capsys.readouterr().out
    monkeypatch.delenv(SPAWNED_AT_ENV)
    os.remove(tmp_path / "s.csv.journal")
    assert main(["--data-dir", str(data), "--models", str(model), "--out", str(tmp_path / "s.csv"),
                 "--time-budget", "100"]) == 0
    assert len(reads) == 3 and (pd.read_csv(tmp_path / "s.csv", keep_default_na=False)["rle"] != "").all()


def test_the_fingerprint_covers_config_json_and_image_files(tmp_path: Path) -> None:
    """command_fingerprint is what the run journals; a changed config.json or image file makes it another run."""
    import numpy as np
    from checkpoints import ConstantNet, make_torchscript_checkpoint

    from inference.io import write_image
    from inference.journal import read_records
    from inference.predict import command_fingerprint, main

    data = _data(tmp_path)
    (data / "test_images").mkdir()
    for i in (1, 2, 3):
        write_image(data / "test_images" / f"{i}.tiff", np.full((32, 32, 3), 120, np.uint8))
    model = make_torchscript_checkpoint(tmp_path / "m" / "fold0", ConstantNet([3.0]), tile=32, task="binary")
    argv = ["--data-dir", str(data), "--models", str(model), "--out", str(tmp_path / "s.csv")]
    assert main(argv) == 0
    journaled = read_records(tmp_path / "s.csv.journal")[0]["fingerprint"]
    assert command_fingerprint(argv) == journaled
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "threshold": 0.9}))  # same weights, other settings
    changed_config = command_fingerprint(argv)
    assert changed_config != journaled
    image = data / "test_images" / "2.tiff"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))  # an image replaced
    assert command_fingerprint(argv) not in (journaled, changed_config)
    assert main(argv) == 0  # the journal of the first run is set aside, not resumed
    assert (tmp_path / "s.csv.journal.stale").is_file()
