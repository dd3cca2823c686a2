"""The time budget on a fake clock: robust per-window cost, levels that come back, skips by the image's own cost."""

from __future__ import annotations

import pytest

from inference.engine.budget import KAGGLE_HOURS, TimeBudget, degradation_levels, kaggle_time_budget


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run(budget: TimeBudget, clock: Clock, costs: list[float], windows: list[int]) -> list[int | None]:
    """Predict images of `windows` windows each at `costs` seconds per window; the level index chosen for each."""
    chosen = []
    for n, (cost, w) in enumerate(zip(costs, windows, strict=True)):
        rest = sum(windows[n + 1:])
        work = [w * lv.cost for lv in budget.levels]
        level = budget.choose(work, [rest * lv.cost for lv in budget.levels], image_number=n, image_id=str(n))
        chosen.append(None if level is None else budget.levels.index(level))
        if level is not None:
            clock.now += cost * w * level.cost
            budget.record(cost * w * level.cost, w * level.cost)
    return chosen


def test_levels_move_back_up_after_a_slow_patch() -> None:
    clock = Clock()
    budget = TimeBudget(100.0, degradation_levels(4, [1.0]), start=0.0, clock=clock)
    # 40 images of 1 window (x4 views): full settings need 0.5 s each = 20 s; five images at 10x speed drag the
    # estimate until the median recovers
    costs = [0.125] * 3 + [2.0] * 6 + [0.125] * 31
    chosen = _run(budget, clock, costs, [4] * 40)
    assert max(i for i in chosen if i is not None) > 0, budget.summary()
    assert chosen[-1] == 0, budget.summary()  # back to the full settings
    assert any(e.startswith("back to full settings") for e in budget.events)
    assert clock.now <= budget.seconds


def test_hysteresis_keeps_a_cheaper_level_while_the_richer_one_barely_fits() -> None:
    clock = Clock()
    levels = degradation_levels(2, [1.0])
    budget = TimeBudget(100.0, levels, start=0.0, clock=clock)
    budget.index = 1  # at TTA 0 after a slow patch
    budget.samples = [1.0, 1.0]
    # the full settings would need 0.95 * 100 * 0.97 of what is left: fits, but not with 10 % to spare
    work = [2.0, 1.0]
    rest = [0.97 * 95.0 - 2.0, (0.97 * 95.0 - 2.0) / 2]
    assert budget.choose(work, rest) is levels[1]
    assert budget.choose(work, [0.8 * 95.0 - 2.0, 1.0]) is levels[0]


def test_skips_by_the_image_own_cost_and_keeps_cheap_ones() -> None:
    clock = Clock()
    budget = TimeBudget(10.0, degradation_levels(0, [1.0], scales=()), start=0.0, clock=clock)
    windows = [1, 1, 500, 1, 1]  # one huge image in the middle
    chosen = _run(budget, clock, [1.0] * 5, windows)
    assert chosen[2] is None and budget.skipped == ["2"]
    assert chosen[3] is not None and chosen[4] is not None
    assert clock.now <= budget.seconds


def test_the_first_image_is_not_in_the_estimate() -> None:
    budget = TimeBudget(10.0, degradation_levels(0, [1.0]), start=0.0, clock=Clock())
    budget.record(100.0, 1)  # warm-up
    assert budget.seconds_per_window() is None
    budget.record(1.0, 1)
    budget.record(3.0, 1)
    assert budget.seconds_per_window() == pytest.approx(2.0)


@pytest.mark.parametrize("rows", [1, 550, 1000, 5000])
def test_kaggle_budget_is_under_9_hours_whatever_the_rows(rows: int) -> None:
    seconds = kaggle_time_budget(rows, 8.5, 550, spent=120.0)
    assert 0 < seconds < KAGGLE_HOURS * 3600 - 120.0
    assert kaggle_time_budget(550, 8.5, 550, spent=0.0) == pytest.approx(8.5 * 3600)
    assert kaggle_time_budget(1000, 8.5, 550, spent=0.0) < 9 * 3600


def test_budget_rejects_non_positive_seconds() -> None:
    with pytest.raises(ValueError, match="positive"):
        TimeBudget(0.0, degradation_levels(0, [1.0]))
    with pytest.raises(ValueError, match="positive"):
        TimeBudget(float("nan"), degradation_levels(0, [1.0]))


def test_a_tight_budget_drops_stain_tta_first_then_ratios_and_flips_last() -> None:
    levels = degradation_levels(2, [1.0], tta_scales=(0.8, 1.0, 1.2), stain=("macenko",))
    clock = Clock()
    # full settings: 20 images x 100 windows x 0.01 s = 20 s; the stain-free level half that
    budget = TimeBudget(15.0, levels, start=0.0, clock=clock)
    chosen = _run(budget, clock, [0.01] * 20, [100] * 20)
    assert chosen[:3] == [0, 0, 1] and max(chosen) == 1, budget.summary()  # only stain TTA was ever dropped
    assert budget.events[0].startswith("stain TTA (macenko) dropped at image 2")
    assert clock.now <= budget.seconds
    clock = Clock()
    budget = TimeBudget(8.0, levels, start=0.0, clock=clock)  # stain and the x1.2 ratio go, the flips stay
    chosen = _run(budget, clock, [0.01] * 20, [100] * 20)
    assert levels[chosen[2]].change == "TTA scale x1.2" and all(levels[i].tta == 2 for i in chosen), budget.summary()
    assert budget.events[0].startswith("stain TTA (macenko); TTA scale x1.2 dropped at image 2")
    assert clock.now <= budget.seconds


def test_a_restarted_child_plans_from_the_journaled_cost() -> None:
    """Seconds per window measured by the children before it: the first image of a restart is not predicted blind."""
    levels = degradation_levels(4, [1.0])
    blind = TimeBudget(100.0, levels, start=0.0, clock=lambda: 50.0)
    assert len(levels) == 5  # full, TTA 4 -> 2, TTA 2 -> 0, scale x0.75, x0.5
    assert blind.choose([8, 4, 2, 1, 1], [0] * 5) == levels[0]  # nothing measured: full settings
    primed = TimeBudget(100.0, levels, start=0.0, clock=lambda: 50.0, prior=[30.0, 10.0, 10.0])
    assert primed.seconds_per_window() == 10.0  # the first journaled image (warm-up) left out
    assert primed.choose([8, 4, 2, 1, 1], [0] * 5) == levels[1]  # 4 windows x 10 s fit the 45 s left, 8 do not
    single = TimeBudget(100.0, levels, start=0.0, clock=lambda: 50.0, prior=[30.0])
    assert single.seconds_per_window() == 30.0  # only a warm-up image measured: still better than none
