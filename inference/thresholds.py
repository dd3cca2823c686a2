"""Threshold files: one cut-off per organ, optionally per data source and organ (2nd place: Hubmap lung 0.06).

A --thresholds JSON is either `{organ: t}` or `{"HPA": {organ: t}, "Hubmap": {organ: t}}`, or both mixed:
top-level organ keys apply to every source, a source's own entries override them. An image whose organ has no
entry for its source (or an unknown source) uses the top-level organ entry, else the --threshold / config.json
default. `python -m inference.tune_thresholds --by-source` writes the per-source form.
"""

from __future__ import annotations

import json
from pathlib import Path

from inference.organs import DATA_SOURCES, ORGANS


def _check_organs(table: dict, where: str) -> dict[str, float]:
    """Validate one {organ: threshold} table (every threshold in (0, 1))."""
    unknown = sorted(set(table) - set(ORGANS))
    if unknown:
        raise ValueError(f"{where}: unknown organ(s) {unknown}; expected keys among {list(ORGANS)} "
                         f"(or a data source {list(DATA_SOURCES)} holding such a table)")
    for organ, value in table.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < float(value) < 1.0:
            raise ValueError(f"{where}: threshold for {organ} must be a number in (0, 1), got {value!r}")
    return {k: float(v) for k, v in table.items()}


def read_thresholds(path: str | Path) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(organ thresholds, {data_source: organ thresholds}) of a thresholds JSON, validated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"thresholds file {path} not found (expected JSON like {{\"kidney\": 0.3}} or "
                                f"{{\"Hubmap\": {{\"lung\": 0.06}}}})")
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object organ -> threshold, got {type(data).__name__}")
    by_source = {}
    for source in DATA_SOURCES:
        if source in data:
            table = data[source]
            if not isinstance(table, dict):
                raise ValueError(f"{path}: {source} must map organ -> threshold, got {type(table).__name__}")
            by_source[source] = _check_organs(table, f"{path} [{source}]")
    organs = _check_organs({k: v for k, v in data.items() if k not in DATA_SOURCES}, str(path))
    return organs, by_source


def thresholds_for(
    organ_thresholds: dict[str, float], source_thresholds: dict[str, dict[str, float]], data_source: object
) -> dict[str, float]:
    """The {organ: threshold} table for one image's data source: its source's entries over the organ ones."""
    own = source_thresholds.get(str(data_source)) if source_thresholds else None
    return {**organ_thresholds, **own} if own else organ_thresholds
