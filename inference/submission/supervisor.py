"""The kernel's safety net: the prediction in a child process restarted after a crash, and submission.csv written
from the journal in test.csv order whatever the child did."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from inference.atomic import atomic_write
from inference.engine.budget import CHILD_GRACE_S
from inference.journal import finished_rows, read_records
from inference.tables import TableError, load_sample_submission_lenient, load_test_lenient

log = logging.getLogger("inference.predict")

ROW_MARGIN = 10.0  # a row running this many times the slowest journaled row is taken for a hang
ROW_FLOOR_S = 600.0  # ... and never less than this (a big image after small ones is not a hang)
SPAWNED_AT_ENV = "INFERENCE_PREDICT_SPAWNED_AT"  # time.time() at which the supervisor started the child


def write_submission(df: pd.DataFrame, path: Path) -> None:
    """Write id,rle atomically (a half-written submission never replaces a good one)."""
    with atomic_write(path) as handle:
        df.to_csv(handle, index=False, lineterminator="\n")


def write_from_journal(data_dir: Path, journal: Path, out: Path, split: str = "test",
                       fingerprint: str | None = None) -> pd.DataFrame:
    """Write OUT with one row per id of DATA/<split>.csv in its order, RLEs from the journal ("" where missing).

    The kernel's last step, whatever the prediction child did. Without a readable <split>.csv the ids come
    from sample_submission.csv (read as leniently); without either, OUT holds the header only. fingerprint
    (cli.command_fingerprint of the command): a journal written by another run (other models, options, table or
    images: a file left in the working folder) is foreign, and its rows are ignored with a warning.
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
    header, records = read_records(journal)
    if fingerprint is not None and header is not None and header.get("fingerprint") != fingerprint:
        log.warning("journal %s was written by another run (other models, options, rows or images): its %d "
                    "record(s) are ignored", journal, len(records))
        records = []
    done = finished_rows(records)
    rles = [done[n].get("rle", "") if n in done and done[n].get("id") == i else "" for n, i in enumerate(ids)]
    missing = sum(1 for n, i in enumerate(ids) if not (n in done and done[n].get("id") == i))
    if missing:
        log.warning("%d of %d row(s) have no journaled result: written empty", missing, len(ids))
    submission = pd.DataFrame({"id": ids, "rle": rles})
    write_submission(submission, out)
    return submission


def _progress(journal: Path) -> tuple[str | None, int]:
    """(fingerprint, number of `done` records) of a journal: a child made progress only by adding done records
    (AdaBN's claim / release records at every start are not progress)."""
    header, records = read_records(journal)
    return (header or {}).get("fingerprint"), sum(1 for r in records if r.get("event") == "done")


def _open_claim(journal: Path) -> tuple[int, str] | None:
    """(row, id) of a claim with no release or done after it: the row the child is on now."""
    open_rows: dict[int, str] = {}
    for r in read_records(journal)[1]:
        if r.get("event") == "claim":
            open_rows[r.get("row")] = str(r.get("id"))
        elif r.get("event") in ("release", "done"):
            open_rows.pop(r.get("row"), None)
    if not open_rows:
        return None
    row = next(reversed(open_rows))
    return row, open_rows[row]


def row_limit(journal: Path, margin: float = ROW_MARGIN, floor: float = ROW_FLOOR_S) -> float | None:
    """Seconds a row may run before the watchdog kills the child: margin x the slowest journaled row, at least
    floor; None before any row has been measured (the first row carries the warm-up: only the deadline holds)."""
    seconds = [float(r.get("seconds") or 0.0) for r in read_records(journal)[1] if r.get("event") == "done"]
    seconds = [x for x in seconds if x > 0]
    return max(margin * max(seconds), floor) if seconds else None


def run_supervised(argv: list[str], journal: Path, time_budget: float | None = None, max_restarts: int = 25,
                   python: str = sys.executable, *, deadline: float | None = None, poll: float = 1.0,
                   clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> int:
    """Run `python -m inference.predict ARGV --journal JOURNAL` in a child process until it finishes or the deadline.

    A child that dies (killed by the OOM killer, a crashing decoder) is restarted: it resumes from the journal,
    the row it died on becoming an empty row. time_budget (seconds from now) is split so that each child gets
    what is left; each child counts its own start-up (interpreter, imports) against it. deadline (seconds from
    now; default time_budget + CHILD_GRACE_S, none without a budget) is enforced here: a child still running
    then is killed and no other is started, so the caller's write_from_journal always runs in time. A row that
    runs past row_limit (ROW_MARGIN x the slowest journaled row) is taken for a hang: the child is killed and
    restarted, that row becoming a crashed (empty) row. Stops after max_restarts, when a child dies without
    adding a `done` record to the journal, or on exit 2 (bad input, or a journal another run holds:
    JournalLocked; a restart would fail the same way).
    Returns the last child's exit status (negative: killed by that signal). clock / sleep: for tests.
    """
    began = clock()
    if deadline is None and time_budget is not None:
        deadline = time_budget + CHILD_GRACE_S
    end = began + deadline if deadline is not None else None
    env = dict(os.environ)
    code = str(Path(__file__).resolve().parents[2])  # the folder holding this inference package
    env["PYTHONPATH"] = os.pathsep.join([code, *filter(None, [env.get("PYTHONPATH")])])
    restarts = 0
    while True:
        before = _progress(journal)
        left = None if time_budget is None else time_budget - (clock() - began)
        budget = [] if left is None else ["--time-budget", f"{max(left, 1.0):.0f}"]
        cmd = [python, "-m", "inference.predict", *argv, "--journal", str(journal), *budget]
        env[SPAWNED_AT_ENV] = repr(time.time())  # the child counts its interpreter and import time as spent
        child = subprocess.Popen(cmd, env=env)
        print(f"prediction child pid {child.pid}", flush=True)
        status, why = _watch(child, journal, end, poll, clock, sleep)
        if why == "deadline":
            log.error("prediction child %d killed at the deadline (%.0f s): the rows it did not finish are empty",
                      child.pid, deadline)
            return status
        if status in (0, 2):
            return status
        after = _progress(journal)
        grew = after[1] > before[1] if after[0] == before[0] else after[1] > 0
        print(f"prediction child {child.pid} {'hung on a row and was killed' if why else 'died'} "
              f"(exit status {status})", flush=True)
        if restarts >= max_restarts or not (grew or why == "row"):  # a killed hung row is the next child's progress
            log.error("prediction child died %s: giving up (%d restart(s))",
                      "without progress" if not grew else "too often", restarts)
            return status
        restarts += 1
        log.warning("restarting the prediction after the row in progress (restart %d of at most %d)",
                    restarts, max_restarts)


def _watch(child: subprocess.Popen, journal: Path, end: float | None, poll: float,
           clock: Callable[[], float], sleep: Callable[[float], None]) -> tuple[int, str | None]:
    """Wait for the child; kill it at `end` ("deadline") or when its open row overruns row_limit ("row")."""
    claim, since = None, clock()
    try:
        while (status := child.poll()) is None:
            now = clock()
            if end is not None and now >= end:
                return _kill(child), "deadline"
            current = _open_claim(journal)
            if current != claim:
                claim, since = current, now
            limit = row_limit(journal) if claim is not None else None
            if limit is not None and now - since > limit:
                log.error("id %s (row %d) has run %.0f s, over %.0f s (%g x the slowest row): the child is taken "
                          "for hung and killed; the row will be empty", claim[1], claim[0], now - since, limit,
                          ROW_MARGIN)
                return _kill(child), "row"
            sleep(poll)
        return status, None
    except BaseException:  # the notebook was interrupted: never leave a child behind
        _kill(child)
        raise


def _kill(child: subprocess.Popen) -> int:
    """SIGKILL the child and reap it; its exit status."""
    child.kill()
    return child.wait()
