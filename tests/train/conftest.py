"""Fixtures of the trainers' tests."""

from __future__ import annotations

import functools

import pytest


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """--minutes on a fake clock: every reading of TimeBudgetHook's clock is one second after the last.

    The hook reads it once per iteration and at each validation's start and end, so an iteration costs 1 s and a
    validation 2 s (the second from the iteration's reading to the validation's start, and the validation itself).
    """
    pytest.importorskip("mmcv", reason="mmcv is built from source by `make venv` (tools/build_mmcv_wheel.sh)")
    from train.mmseg_ext.time_budget import TimeBudgetHook

    ticks = iter(range(10**6))
    clock = functools.partialmethod(TimeBudgetHook.__init__, clock=lambda: float(next(ticks)))
    monkeypatch.setattr(TimeBudgetHook, "__init__", clock)
