"""The submission loop's journal: finished rows survive the process that predicted them.

A JSON-lines file, append-only, each record flushed and fsynced before the loop moves on: a header with the
run's fingerprint (models, options, table), then per row a `claim` when its prediction starts and a `done` with
its result. Re-running the same command reads it back: done rows are not predicted again, and a row claimed
but never done is the one the previous process died on (out-of-memory killer, a crashing decoder), so it
becomes an empty row instead of killing the run again. A journal with another fingerprint is set aside
(renamed to .stale) and the run starts over. A torn last line (the process died mid-write) is ignored.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("inference.journal")

VERSION = 1


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
                continue  # a line torn by a kill mid-write
            if not isinstance(record, dict):
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


class Journal:
    """Append-only record of claimed and finished rows for one fingerprint (see the module docstring)."""

    def __init__(self, path: str | Path, fingerprint: str) -> None:
        self.path = Path(path)
        header, records = read_records(self.path)
        if header is not None and header.get("fingerprint") != fingerprint:
            stale = self.path.with_name(self.path.name + ".stale")
            log.warning("journal %s was written by a run with other models, options or rows: set aside as %s, "
                        "starting over", self.path, stale.name)
            os.replace(self.path, stale)
            header, records = None, []
        self.done: dict[int, dict] = finished_rows(records)
        claimed: set[int] = set()  # in order: a row released (AdaBN's read of it) may be claimed again later
        for r in records:
            if r.get("event") == "claim":
                claimed.add(r.get("row"))
            elif r.get("event") in ("release", "done"):
                claimed.discard(r.get("row"))
        self.crashed: set[int] = claimed - set(self.done)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the whole run
        if header is None:
            self._file.truncate(0)
            self._append({"journal": VERSION, "fingerprint": fingerprint})
        elif not self._ends_with_newline():  # a torn last record: the next one starts on its own line
            self._file.write("\n")

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
        self._file.close()
