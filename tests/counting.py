"""Counting how often code under test calls a function (e.g. how many times a trainer validated)."""

from __future__ import annotations

import pytest


def count_calls(monkeypatch: pytest.MonkeyPatch, function_name: str, *modules) -> list[int]:
    """Replace modules' `function_name` (one function imported into several modules) by a counting wrapper; the
    returned list grows by one per call (how many times a trainer validated)."""
    calls: list[int] = []
    original = getattr(modules[0], function_name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    for module in modules:
        monkeypatch.setattr(module, function_name, counted)
    return calls
