"""The time budget's view of a table: every row's forward windows at every degradation level."""

from __future__ import annotations

import numpy as np

from inference.engine.budget import Level, TimeBudget
from inference.engine.ensemble import Member, member_windows
from inference.organs import image_pixel_size
from inference.submission.members import row_members
from inference.submission.options import Options


class BudgetPlan:
    """The time budget over one table: every row's forward windows at every level, known before predicting it.

    Rows whose CSV size is unknown count as the median known size. rest[n] holds, per level, the windows of the
    rows to predict after row n.
    """

    def __init__(self, budget: TimeBudget, rows: list, todo: list[int], members: list[Member],
                 options: Options, folds: dict[str, int] | None) -> None:
        self.budget, self.members, self.options, self.folds = budget, members, options, folds
        known = [(int(r.img_height), int(r.img_width)) for r in rows if int(r.img_height) > 0 and int(r.img_width) > 0]
        typical = tuple(int(v) for v in np.median(known, axis=0)) if known else (3000, 3000)
        self.typical: tuple[int, int] = typical  # the size planned for a row whose CSV size is unknown
        self.rest: dict[int, list[float]] = {}
        total = [0.0] * len(budget.levels)
        for n in reversed(todo):
            self.rest[n] = list(total)
            r = rows[n]
            h, w = (int(r.img_height), int(r.img_width)) if int(r.img_height) > 0 and int(r.img_width) > 0 else typical
            total = [t + c for t, c in zip(total, self.windows(r, h, w), strict=True)]

    def _fold(self, row: object) -> int | None:
        return None if self.folds is None else self.folds.get(str(row.id))

    def windows(self, row: object, height: int, width: int) -> list[int]:
        """This row's forward windows at each level, for an image of (height, width)."""
        if self.folds is not None and self._fold(row) is None:
            return [0] * len(self.budget.levels)
        pixel_size = image_pixel_size(row.pixel_size, row.organ, row.data_source)[0]
        out = []
        for level in self.budget.levels:
            opts = self.options.with_level(level)
            kept = row_members(self.members, self._fold(row), level.dropped)
            views = 1 + len(opts.stain_tta)  # the image as is and each stain view
            out.append(sum(member_windows(m, height, width, pixel_size, opts, views) for m in kept))
        return out

    def choose(self, n: int, row: object, height: int, width: int) -> tuple[Level | None, int]:
        """The level for row n at its real size (None: skip it) and the windows it will run."""
        work = self.windows(row, height, width)
        level = self.budget.choose(work, self.rest[n], image_number=n, image_id=str(row.id))
        return level, (work[self.budget.levels.index(level)] if level is not None else 0)
