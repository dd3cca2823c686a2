"""The one atomic writer: a file appears whole or not at all (temporary file in the same folder, fsync, os.replace).

Every file whose presence or contents a resume trusts (metrics.json, checkpoints, submission.csv, tile indexes,
journals' side files) goes through `atomic_write`, so a kill, an out-of-memory exit or a full disk never leaves half
a file behind under the real name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", *, suffix: str = "", encoding: str | None = None
                 ) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on a clean exit flush, fsync and rename it onto `path`.

    mode "w" (text, UTF-8 unless `encoding`) or "wb". suffix is given to the temporary name (np.save appends
    ".npy" to names without it). On an exception the temporary file is removed and `path` is left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    text = mode == "w"
    try:
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if text else None,
                       **({"newline": ""} if text else {})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_write(path) as handle:
        handle.write(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write a binary file atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def write_json(path: str | Path, data: Any, indent: int = 2) -> None:
    """Write JSON atomically (a trailing newline, like json.dump to a text editor's file)."""
    write_text(path, json.dumps(data, indent=indent) + "\n")
