"""Decoded copies of tile PNGs, so that a training epoch after the first reads pixels instead of decoding them.

A 1024 px RGB tile PNG takes about 25 ms to decode on one core, a quarter of the mmseg SegFormer sample
(benchmarks/data_pipeline.py); the same pixels stored uncompressed load in about 1 ms from the page cache. The
first read of a tile writes `TILES/decoded/<folder>/<name>.npy` beside its PNG (`TILES/<folder>/<name>.png`; the
pixels' own size, 3 MB per 1024 px tile: 1.8x the demo tiles' PNG bytes, more for tiles that compress better),
stamped with the PNG's modification time; a copy whose stamp differs from its PNG's (the tile set was rebuilt) is
decoded and written again. Delete `TILES/decoded/` to take the disk space back; nothing else reads it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from data_prep.tileset import read_png
from inference.atomic import atomic_write

DECODED_DIR = "decoded"


def decoded_path(png: Path) -> Path:
    """Where the decoded copy of TILES/<folder>/<name>.png lives: TILES/decoded/<folder>/<name>.npy."""
    return png.parent.parent / DECODED_DIR / png.parent.name / f"{png.stem}.npy"


def read_tile_image(png: str | Path) -> np.ndarray:
    """A tile PNG as (h, w, 3) RGB uint8, from its decoded copy when that is current, else decoded (and copied).

    A copy that cannot be written (a full or read-only disk) leaves a warning and the decoded pixels are returned
    as they are; a current copy that cannot be read raises.
    """
    png = Path(png)
    stamp = png.stat().st_mtime_ns
    copy = decoded_path(png)
    try:
        current = copy.stat().st_mtime_ns == stamp
    except OSError:  # none yet, or its folder cannot be reached (then the write below warns)
        current = False
    if current:
        try:
            return np.load(copy)
        except (ValueError, OSError) as exc:
            raise OSError(f"cannot read the decoded copy {copy} of {png} ({exc}); delete {copy.parent.parent} "
                          "and the tiles are decoded again") from exc
    image = read_png(png)
    try:
        with atomic_write(copy, "wb", suffix=".npy") as handle:
            np.save(handle, image)
            handle.flush()
            os.utime(handle.fileno(), ns=(stamp, stamp))  # before the rename: a reader never sees a fresh, unstamped copy
    except OSError as exc:
        # one warning per folder and cause (warnings shows a message once), not one per tile
        warnings.warn(f"cannot write decoded tile copies under {copy.parent} ({exc.strerror or exc}); those tiles "
                      "are decoded again every time", stacklevel=2)
    return image
