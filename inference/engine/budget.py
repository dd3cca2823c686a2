"""A wall-clock budget for the submission loop: degrade settings in a fixed order so every row is written in time.

Levels, cheapest last: the full settings; then stain TTA dropped (--stain-tta); then multi-scale TTA ratios dropped
one at a time, costliest first, keeping the one nearest 1 (--tta-scales); then TTA views halved (8 -> 4 -> 2 -> 0);
then ensemble members dropped one at a time, lowest weight first (among equal weights the last listed), always
keeping one; then coarser working scales (x0.75, x0.5). With neither stain TTA nor extra ratios the levels are
the flips-members-scales ones of before.

Cost is counted in forward windows (at every TTA ratio's working size, the sliding windows x flip views x the
image views (1 + stain methods), summed over the members kept), which the caller knows for every image and
level before predicting it (inference.engine.ensemble.member_windows); Level.cost is only a nominal relative
cost (a ratio r counted as r^2) that shows the order. The seconds per window are the median of the measured
images, the first one excluded: it carries the warm-up (CUDA context, cuDNN autotuning, TorchScript's profiling
runs) and would make the whole run look several times slower. A restarted child (inference.predict's supervisor)
starts from the seconds per window its predecessors measured (`prior`, read back from the journal), so its
first image is already planned, not predicted blind at the full settings. Before each image the budget projects the run's end at each level as elapsed time plus seconds per window x (this
image's windows + the windows of the images still to come), and takes the richest level whose projection fits
TARGET_SHARE of the budget. Moving to a cheaper level is immediate; moving back to a richer one needs the
projection to fit with HYSTERESIS to spare, so one fast image does not make the levels flap. When no level fits,
an image whose own projected cost at the last level would end past the budget is skipped (empty row, logged);
cheaper images after it are still predicted.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger("inference.engine.budget")

COARSER_SCALES = (0.75, 0.5)
# Projections aim at this share of the budget: the end of the loop (writing the CSV, the last image's
# variance) must still fit.
TARGET_SHARE = 0.95
# A richer level is taken back only when its projection leaves this share of the remaining time unused.
HYSTERESIS = 0.1
WARMUP_IMAGES = 1  # measured images left out of the estimate
KAGGLE_HOURS = 9.0  # the notebook's hard limit
KAGGLE_OVERHEAD_S = 900.0  # kept free under it: start-up, wheel install, restarts of a crashed child, the CSV
CHILD_GRACE_S = 300.0  # past its --time-budget a prediction child is killed (the budget aims at 95% of it)
KAGGLE_RESERVE_S = 120.0  # before Kaggle's limit: writing submission.csv from the journal after the last child


@dataclass(frozen=True)
class Level:
    """One setting of the degradable knobs, and its nominal cost relative to the full settings."""

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


def kaggle_time_budget(rows: int, hours: float, hidden_images: int, spent: float,
                       limit_hours: float = KAGGLE_HOURS, overhead: float = KAGGLE_OVERHEAD_S) -> float:
    """Seconds for the notebook's prediction: `hours` per `hidden_images` rows scaled to `rows`, never beyond the
    Kaggle limit minus the overhead, minus what the notebook has `spent` already (at least 1 s)."""
    scaled = hours * 3600.0 * max(rows, 1) / max(hidden_images, 1)
    return max(min(scaled, limit_hours * 3600.0 - overhead) - spent, 1.0)


def kaggle_deadline(spent: float, limit_hours: float = KAGGLE_HOURS, reserve: float = KAGGLE_RESERVE_S) -> float:
    """Seconds from now at which the notebook must stop predicting: Kaggle's limit minus the reserve for writing
    submission.csv, minus what the notebook has `spent` already (at least 1 s)."""
    return max(limit_hours * 3600.0 - reserve - spent, 1.0)


class TimeBudget:
    """Chooses the level for each image from the measured seconds per window; records what changed and when."""

    def __init__(
        self,
        seconds: float,
        levels: list[Level],
        start: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
        warmup: int = WARMUP_IMAGES,
        hysteresis: float = HYSTERESIS,
        prior: Sequence[float] = (),
    ) -> None:
        if not seconds > 0:
            raise ValueError(f"--time-budget must be positive seconds, got {seconds}")
        self.seconds, self.levels, self.clock = float(seconds), levels, clock
        self.warmup, self.hysteresis = warmup, hysteresis
        self.start = clock() if start is None else start
        self.index = 0
        self.samples: list[float] = []  # measured seconds per forward window, one per image
        self.prior = [float(p) for p in prior if p > 0]  # seconds per window an earlier process measured, in order
        self.events: list[str] = []
        self.skipped: list[object] = []

    @property
    def level(self) -> Level:
        return self.levels[self.index]

    def elapsed(self) -> float:
        return self.clock() - self.start

    def seconds_per_window(self) -> float | None:
        """Median seconds per window over the measured images after the warm-up (None before there are any).

        An earlier process's images (prior) count too, its own first one left out as this process's is; when that
        leaves nothing, all of prior (a warm-up measurement over-estimates: safer than no estimate).
        """
        usable = self.prior[self.warmup:] + self.samples[self.warmup:] or self.prior
        return statistics.median(usable) if usable else None

    def choose(self, work: Sequence[float], rest: Sequence[float], image_number: int = 0,
               image_id: object = None) -> Level | None:
        """Level for the next image; None = skip it (empty row).

        work[i]: this image's forward windows at level i; rest[i]: the windows of every image after it at level i.
        """
        elapsed = self.elapsed()
        per_window = self.seconds_per_window()
        if per_window is None:
            if elapsed > self.seconds:  # nothing measured yet, but the budget is gone already
                return self._skip(image_id, elapsed)
            return self.level
        available = TARGET_SHARE * self.seconds - elapsed
        chosen = None
        for i in range(len(self.levels)):
            need = per_window * (work[i] + rest[i])
            margin = (1.0 - self.hysteresis) if i < self.index else 1.0
            if need <= margin * available:
                chosen = i
                break
        if chosen is None:
            chosen = len(self.levels) - 1
            if elapsed + per_window * work[chosen] > self.seconds:
                self._move(chosen, image_number, elapsed)
                return self._skip(image_id, elapsed)
        self._move(chosen, image_number, elapsed)
        return self.level

    def record(self, seconds: float, windows: float) -> None:
        """Add one image's measured seconds for the forward windows it ran."""
        if windows > 0:
            self.samples.append(seconds / windows)

    def _skip(self, image_id: object, elapsed: float) -> None:
        self.skipped.append(image_id)
        log.warning("id %s: skipped (empty mask) to stay inside the %.0f s time budget (%.0f s used)",
                    image_id, self.seconds, elapsed)
        return None

    def _move(self, index: int, image_number: int, elapsed: float) -> None:
        if index == self.index:
            return
        if index > self.index:
            changes = [self.levels[i].change for i in range(self.index + 1, index + 1)]
            event = f"{'; '.join(changes)} dropped at image {image_number} ({elapsed:.0f} s)"
        else:
            event = f"back to {self.levels[index].change} at image {image_number} ({elapsed:.0f} s)"
        self.index = index
        self.events.append(event)
        log.warning("time budget %.0f s: %s", self.seconds, event)

    def summary(self) -> str:
        """One line: what was dropped and when, and how many images were skipped."""
        line = f"time budget {self.seconds:.0f} s, used {self.elapsed():.0f} s: "
        line += "; ".join(self.events) if self.events else "nothing dropped"
        if self.skipped:
            line += f"; {len(self.skipped)} image(s) skipped to stay inside it {self.skipped[:10]}"
        return line
