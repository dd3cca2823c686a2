"""A table's images read and stain-normalised as the kernel reads them: the one path for the submission loop,
training validation (train.validation) and pseudo-labelling (train.pseudo_label).

table_images yields one ImageSlot per row; slot.load() reads the row's image (or returns the error it raised) and
normalises it to the stain reference the models see (Options.image_reference: --stain-reference without
--stain-tta). With prefetch the next row's image is read in a thread while the current one is predicted; without,
nothing is read before load(), so the submission loop can claim the row in its journal and ask its time budget
first, and an image the budget skips is never decoded.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from inference.io import MAX_IMAGE_SIDE, check_side, read_image


@dataclass
class TableImage:
    """One row's image: as read, as the models see it, or the error that stopped the read."""

    row: object
    image: np.ndarray | None = None  # as decoded
    seen: np.ndarray | None = None  # what the models see: `image` normalised to the reference, or `image` itself
    error: Exception | None = None
    notes: list[str] = field(default_factory=list)  # what the reader had to do (a fallback decoder, ...)


def plain_file_name(image_id: str) -> bool:
    """True for an id that names a file inside test_images/ (no separator, no '..', nothing outside it)."""
    return (bool(image_id) and image_id not in (".", "..") and "\x00" not in image_id
            and Path(image_id).name == image_id and "/" not in image_id and "\\" not in image_id)


_REFERENCES: dict[str, object] = {}


def normalise(image: np.ndarray, reference: str) -> np.ndarray:
    """Macenko-normalise to a --stain-reference (loaded once; only kernels that ask for it need torchstain)."""
    from inference.stain import load_reference, normalise_stain

    if reference not in _REFERENCES:
        _REFERENCES[reference] = load_reference(reference)
    return normalise_stain(image, _REFERENCES[reference])


def read_table_image(row: object, image_dir: Path, reference: str | None = None,
                     max_side: int | None = MAX_IMAGE_SIDE) -> TableImage:
    """Read row.id's image from image_dir, refusing ids that are not plain file names and sizes over max_side
    (the CSV's declared size first, then the file's), and normalise it to `reference`; never raises."""
    image_id = str(row.id)
    notes: list[str] = []
    try:
        if not plain_file_name(image_id):
            raise ValueError(f"id {image_id!r} is not a plain file name: not read (it would name a path outside "
                             "the images folder)")
        check_side(int(row.img_height), int(row.img_width), max_side, "the CSV size")
        image = read_image(Path(image_dir) / f"{image_id}.tiff", max_side, notes)
        seen = image if reference is None else normalise(image, reference)
    except Exception as exc:  # reported per image by the caller, never fatal here
        return TableImage(row, error=exc, notes=notes)
    return TableImage(row, image, seen, notes=notes)


class ImageSlot:
    """A row whose image is read on load() (or was read ahead in a thread)."""

    def __init__(self, row: object, read: Future | None, image_dir: Path, reference: str | None,
                 max_side: int | None) -> None:
        self.row = row
        self._read, self._args = read, (image_dir, reference, max_side)
        self._loaded: TableImage | None = None

    def load(self) -> TableImage:
        """The row's TableImage (read now unless it was read ahead)."""
        if self._loaded is None:
            self._loaded = self._read.result() if self._read is not None else read_table_image(self.row, *self._args)
        return self._loaded


def table_images(rows: pd.DataFrame | Sequence[object], image_dir: Path, reference: str | None = None,
                 max_side: int | None = MAX_IMAGE_SIDE, prefetch: bool = False) -> Iterator[ImageSlot]:
    """One ImageSlot per row of a table (a DataFrame or its itertuples rows), in order (see the module doc)."""
    items = list(rows.itertuples(index=False)) if isinstance(rows, pd.DataFrame) else list(rows)
    image_dir = Path(image_dir)
    if not prefetch:
        for row in items:
            yield ImageSlot(row, None, image_dir, reference, max_side)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        def submit(i: int) -> Future | None:
            return pool.submit(read_table_image, items[i], image_dir, reference, max_side) if i < len(items) else None

        pending = submit(0)
        for i, row in enumerate(items):
            current, pending = pending, submit(i + 1)
            yield ImageSlot(row, current, image_dir, reference, max_side)
