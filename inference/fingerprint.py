"""What says an input is the same as last time: the identities the resume fingerprints are built from.

One implementation for the submission journal (inference.submission.loop.run_fingerprint) and the whole-slide
resume (inference.wsi.predict.run_digest and its work store), so a file or a checkpoint means the same to both.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def file_identity(path: str | Path) -> list[int] | None:
    """[size, mtime in ns] of a file (None when it is missing): a changed file is a different input."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def model_identity(folder: str | Path) -> dict:
    """A checkpoint folder as a run's input: its resolved path, config.json's contents (sha256) and its weights
    file (the name config.json gives, with that file's identity). A folder without a readable config.json (an
    in-memory predictor's name) hashes as an empty config with no weights."""
    folder = Path(folder)
    try:
        config = (folder / "config.json").read_bytes()
    except OSError:
        config = b""
    try:
        weights = json.loads(config).get("weights")
    except (ValueError, AttributeError):  # not JSON, or JSON that is not an object
        weights = None
    return {"folder": str(folder.resolve()), "config": hashlib.sha256(config).hexdigest(),
            "weights": [weights, file_identity(folder / weights) if isinstance(weights, str) else None]}
