"""A wall-clock budget for the submission loop: degrade settings in a fixed order so every row is written in time.

Levels, cheapest last: the full settings; then stain TTA dropped (--stain-tta); then multi-scale TTA ratios dropped
one at a time, costliest first, keeping the one nearest 1 (--tta-scales); then TTA views halved (8 -> 4 -> 2 -> 0);
then ensemble members dropped one at a time, lowest weight first (among equal weights the last listed), always
keeping one; then coarser working scales (x0.75, x0.5). Before each image the budget projects the run's end as
elapsed time plus the remaining images times the measured seconds per image, converted between levels by each
level's relative cost (stain views x sum of squared TTA ratios x flip views x members kept x scale^2, members
assumed to cost the same), and moves to the first level whose projection fits. Levels only get cheaper. An image
that would not fit even at the last level is skipped (empty row, logged), so the loop ends inside the budget
whatever the images cost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("inference.engine.budget")

COARSER_SCALES = (0.75, 0.5)
# Projections aim at this share of the budget: the end of the loop (writing the CSV, the last image's
# variance) must still fit.
TARGET_SHARE = 0.95


@dataclass(frozen=True)
class Level:
    """One setting of the degradable knobs, and its cost relative to the full settings."""

    tta: int
    dropped: tuple[int, ...]  # indices into the member list
    coarsen: float
    cost: float
    change: str  # what this level gave up against the previous one
    tta_scales: tuple[float, ...] = (1.0,)  # multi-scale TTA ratios kept
    stain: tuple[str, ...] = ()  # stain TTA methods kept


def degradation_levels(
    tta: int,
    weights: list[float],
    scales: tuple[float, ...] = COARSER_SCALES,
    tta_scales: tuple[float, ...] = (1.0,),
    stain: tuple[str, ...] = (),
) -> list[Level]:
    """The fixed order of levels for a run with this TTA, these member weights, TTA ratios and stain views."""
    n = len(weights)
    ratios = tuple(tta_scales)

    def views(stain_kept: tuple[str, ...], ratios_kept: tuple[float, ...], flips: int) -> float:
        return (1 + len(stain_kept)) * sum(r * r for r in ratios_kept) * max(flips, 1)

    full = views(tuple(stain), ratios, tta)
    levels = [Level(tta, (), 1.0, 1.0, "full settings", ratios, tuple(stain))]
    if stain:
        levels.append(Level(tta, (), 1.0, views((), ratios, tta) / full, f"stain TTA ({'+'.join(stain)})", ratios))
    keep = min(ratios, key=lambda r: (abs(r - 1.0), r))
    for r in sorted((r for r in ratios if r != keep), reverse=True):
        ratios = tuple(x for x in ratios if x != r)
        levels.append(Level(tta, (), 1.0, views((), ratios, tta) / full, f"TTA scale x{r:g}", ratios))
    t = tta
    while t > 0:
        new = t // 2 if t > 2 else 0
        levels.append(Level(new, (), 1.0, views((), ratios, new) / full, f"TTA {t} -> {new} views", ratios))
        t = new
    base = views((), ratios, t) / full
    order = sorted(range(n), key=lambda i: (weights[i], -i))
    dropped: tuple[int, ...] = ()
    for i in order[:-1]:
        dropped = (*dropped, i)
        levels.append(Level(t, dropped, 1.0, base * (n - len(dropped)) / n, f"member {i} (weight {weights[i]:g})",
                            ratios))
    kept = (n - len(dropped)) / n
    for s in scales:
        levels.append(Level(t, dropped, s, base * kept * s * s, f"working scale x{s:g}", ratios))
    return levels


class TimeBudget:
    """Chooses the level for each image from the measured seconds per image; records what it dropped and when."""

    def __init__(
        self,
        seconds: float,
        levels: list[Level],
        start: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if seconds <= 0:
            raise ValueError(f"--time-budget must be positive seconds, got {seconds}")
        self.seconds, self.levels, self.clock = float(seconds), levels, clock
        self.start = clock() if start is None else start
        self.index = 0
        self.full_seconds: list[float] = []  # measured seconds converted to full-settings seconds
        self.events: list[str] = []
        self.skipped: list[object] = []

    @property
    def level(self) -> Level:
        return self.levels[self.index]

    def elapsed(self) -> float:
        return self.clock() - self.start

    def per_image(self, level: Level) -> float | None:
        """Projected seconds for one image at a level (None before the first measurement)."""
        if not self.full_seconds:
            return None
        return sum(self.full_seconds) / len(self.full_seconds) * level.cost

    def choose(self, image_number: int, remaining: int, image_id: object = None) -> Level | None:
        """Level for the next image, `remaining` images left including it; None = skip it (empty row)."""
        elapsed = self.elapsed()
        for i in range(self.index, len(self.levels)):
            cost = self.per_image(self.levels[i])
            if cost is None or elapsed + remaining * cost <= TARGET_SHARE * self.seconds:
                self._move(i, image_number, elapsed)
                return self.level
        self._move(len(self.levels) - 1, image_number, elapsed)
        cost = self.per_image(self.level) or 0.0
        if elapsed + cost > self.seconds:
            self.skipped.append(image_id)
            log.warning("id %s: skipped (empty mask) to stay inside the %.0f s time budget (%.0f s used)",
                        image_id, self.seconds, elapsed)
            return None
        return self.level

    def record(self, seconds: float, level: Level) -> None:
        """Add one image's measured seconds, predicted at `level`."""
        self.full_seconds.append(seconds / level.cost)

    def _move(self, index: int, image_number: int, elapsed: float) -> None:
        while self.index < index:
            self.index += 1
            event = f"{self.level.change} dropped at image {image_number} ({elapsed:.0f} s)"
            self.events.append(event)
            log.warning("time budget %.0f s: %s", self.seconds, event)

    def summary(self) -> str:
        """One line: what was dropped and when, and how many images were skipped."""
        parts = [f"time budget {self.seconds:.0f} s, used {self.elapsed():.0f} s"]
        parts.append("; ".join(self.events) if self.events else "nothing dropped")
        if self.skipped:
            parts.append(f"{len(self.skipped)} image(s) skipped to stay inside it {self.skipped[:10]}")
        return ": ".join(parts[:2]) + (f"; {parts[2]}" if len(parts) > 2 else "")
