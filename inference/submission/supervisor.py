"""The kernel's safety net: the prediction in a child process restarted after a crash, and submission.csv written
from the journal in test.csv order whatever the child did."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from inference.atomic import atomic_write
from inference.journal import finished_rows, read_records
from inference.tables import TableError, load_sample_submission_lenient, load_test_lenient

log = logging.getLogger("inference.predict")


def write_submission(df: pd.DataFrame, path: Path) -> None:
    """Write id,rle atomically (a half-written submission never replaces a good one)."""
    with atomic_write(path) as handle:
        df.to_csv(handle, index=False, lineterminator="\n")


def write_from_journal(data_dir: Path, journal: Path, out: Path, split: str = "test") -> pd.DataFrame:
    """Write OUT with one row per id of DATA/<split>.csv in its order, RLEs from the journal ("" where missing).

    The kernel's last step, whatever the prediction child did. Without a readable <split>.csv the ids come
    from sample_submission.csv (read as leniently); without either, OUT holds the header only.
    """
    try:
        ids = load_test_lenient(data_dir / f"{split}.csv")[0]["id"].astype(str).tolist()
    except TableError as exc:
        log.warning("%s; ids taken from sample_submission.csv", exc)
        try:
            ids = load_sample_submission_lenient(data_dir / "sample_submission.csv")[0]
        except TableError as exc2:
            log.error("%s: the submission has no rows", exc2)
            ids = []
    done = finished_rows(read_records(journal)[1])
    rles = [done[n].get("rle", "") if n in done and done[n].get("id") == i else "" for n, i in enumerate(ids)]
    missing = sum(1 for n, i in enumerate(ids) if not (n in done and done[n].get("id") == i))
    if missing:
        log.warning("%d of %d row(s) have no journaled result: written empty", missing, len(ids))
    submission = pd.DataFrame({"id": ids, "rle": rles})
    write_submission(submission, out)
    return submission


def run_supervised(argv: list[str], journal: Path, time_budget: float | None = None, max_restarts: int = 25,
                   python: str = sys.executable) -> int:
    """Run `python -m inference.predict ARGV --journal JOURNAL` in a child process until it finishes.

    A child that dies (killed by the OOM killer, a crashing decoder) is restarted: it resumes from the journal,
    the row it died on becoming an empty row. time_budget (seconds from now) is split so that each child gets
    what is left. Stops after max_restarts, when a child dies without adding to the journal, or on exit 2
    (bad input: a restart would fail the same way). Returns the last child's exit status.
    """
    deadline = time.perf_counter() + time_budget if time_budget is not None else None
    env = dict(os.environ)
    code = str(Path(__file__).resolve().parents[2])  # the folder holding this inference package
    env["PYTHONPATH"] = os.pathsep.join([code, *filter(None, [env.get("PYTHONPATH")])])
    restarts = 0
    while True:
        before = journal.stat().st_size if journal.is_file() else 0
        budget = [] if deadline is None else ["--time-budget", f"{max(deadline - time.perf_counter(), 1.0):.0f}"]
        cmd = [python, "-m", "inference.predict", *argv, "--journal", str(journal), *budget]
        child = subprocess.Popen(cmd, env=env)
        print(f"prediction child pid {child.pid}", flush=True)
        status = child.wait()
        if status in (0, 2):
            return status
        grew = journal.is_file() and journal.stat().st_size > before
        print(f"prediction child {child.pid} died (exit status {status})", flush=True)
        if restarts >= max_restarts or not grew:
            log.error("prediction child died %s: giving up (%d restart(s))",
                      "without progress" if not grew else "too often", restarts)
            return status
        restarts += 1
        log.warning("restarting the prediction after the row in progress (restart %d of at most %d)",
                    restarts, max_restarts)
