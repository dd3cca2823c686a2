"""The submission loop's journal: finished rows survive the process that predicted them.

A JSON-lines file, append-only, each record flushed and fsynced before the loop moves on: a header with the
run's fingerprint (models, options, table), then per row a `claim` when its prediction starts and a `done` with
its result. Re-running the same command reads it back: done rows are not predicted again, and a row claimed
but never done is the one the previous process died on (out-of-memory killer, a crashing decoder), so it
becomes an empty row instead of killing the run again. A torn last line (the process died mid-write) is ignored.

Nothing is ever truncated or overwritten: a journal with another fingerprint is renamed to NAME.stale, one
whose first line is not this version's header (damaged, or a file that is not a journal) to NAME.damaged (a
free name: .stale.1, .damaged.2 ... when those exist), and the run starts a new journal. Only one process
writes a journal: it holds an exclusive lock (fcntl.flock) on the side file NAME.lock from opening to close(),
and a second Journal on the same path, in this process or another, is refused with JournalLocked. The lock
file is never removed (removing it would let two writers lock two different files); the operating system
releases the lock of a process that dies, so a restarted child takes it over.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows: journals are not locked there (Kaggle and the cluster run Linux)
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("inference.journal")

VERSION = 1


class JournalLocked(RuntimeError):
    """Another process (or another Journal in this one) is writing this journal."""


def read_records(path: Path) -> tuple[dict | None, list[dict]]:
    """(header, records) of a journal file; (None, []) when it is missing or has no readable header."""
    if not path.is_file():
        return None, []
    header, records = None, []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if header is None and line.strip():
                    return None, []  # the first line is the header: a damaged one is no journal of ours
                continue  # a line torn by a kill mid-write
            if not isinstance(record, dict):
                if header is None:
                    return None, []
                continue
            if header is None:
                if record.get("journal") != VERSION:
                    return None, []
                header = record
            else:
                records.append(record)
    return header, records


def finished_rows(records: list[dict]) -> dict[int, dict]:
    """row number -> its last `done` record."""
    return {r["row"]: r for r in records if r.get("event") == "done" and isinstance(r.get("row"), int)}


def set_aside(path: Path, suffix: str) -> Path:
    """Rename `path` to the first free PATH.SUFFIX, PATH.SUFFIX.1, ... (never over an earlier file); return it."""
    target = path.with_name(f"{path.name}.{suffix}")
    n = 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{suffix}.{n}")
    os.rename(path, target)
    return target


def _lock(path: Path) -> IO[str]:
    """Open PATH.lock and hold an exclusive flock on it; JournalLocked when someone else holds it."""
    lock_path = path.with_name(path.name + ".lock")
    handle = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held until Journal.close
    if fcntl is None:  # not a POSIX system: no lock to take
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise JournalLocked(
            f"journal {path} is being written by another run (lock {lock_path} held; owner {owner}): wait for it "
            "to finish, stop it, or give this run another --journal"
        ) from exc
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


class Journal:
    """Append-only record of claimed and finished rows for one fingerprint (see the module docstring).

    Holds the journal's lock until close() (also a context manager).
    """

    def __init__(self, path: str | Path, fingerprint: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.path)
        try:
            header, records = self._open_records(fingerprint)
        except BaseException:
            self._lock.close()
            raise
        self.done: dict[int, dict] = finished_rows(records)
        claimed: set[int] = set()  # in order: a row released (AdaBN's read of it) may be claimed again later
        for r in records:
            if r.get("event") == "claim":
                claimed.add(r.get("row"))
            elif r.get("event") in ("release", "done"):
                claimed.discard(r.get("row"))
        self.crashed: set[int] = claimed - set(self.done)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the whole run
        if header is None:
            self._append({"journal": VERSION, "fingerprint": fingerprint})
        elif not self._ends_with_newline():  # a torn last record: the next one starts on its own line
            self._file.write("\n")

    def _open_records(self, fingerprint: str) -> tuple[dict | None, list[dict]]:
        """The header and records to resume from; a foreign, damaged or other-fingerprint journal set aside."""
        header, records = read_records(self.path)
        if header is not None and header.get("fingerprint") != fingerprint:
            stale = set_aside(self.path, "stale")
            log.warning("journal %s was written by a run with other models, options or rows: set aside as %s, "
                        "starting over", self.path, stale.name)
            return None, []
        if header is None and self.path.is_file() and self.path.stat().st_size > 0:
            damaged = set_aside(self.path, "damaged")
            log.warning("journal %s does not start with a version-%d journal header (damaged, or not a journal): "
                        "kept as %s, starting over", self.path, VERSION, damaged.name)
        return header, records

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return True
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def _append(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def claim(self, row: int, image_id: str) -> None:
        """Record that the prediction of a row starts (a crash before done() blames this row)."""
        self._append({"event": "claim", "row": row, "id": image_id})

    def release(self, row: int) -> None:
        """Undo a claim without blaming the row (the run was interrupted by the user)."""
        self._append({"event": "release", "row": row})

    def finish(self, row: int, result: dict) -> None:
        """Record a row's result (id, rle, status, notes, ...)."""
        self._append({"event": "done", "row": row, **result})
        self.done[row] = result

    def close(self) -> None:
        """Close the journal and release its lock (idempotent)."""
        self._file.close()
        self._lock.close()  # closing the last descriptor releases the flock

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
