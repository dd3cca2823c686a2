"""The organ table: class indices, physical pixel sizes and tissue thickness per data source.

Class order is fixed for every model in this repo: 0 = background, then the organs in the order the
competition lists them. Values come from the competition data page (see ../shared/DOMAIN.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ORGANS: tuple[str, ...] = ("kidney", "prostate", "largeintestine", "spleen", "lung")
CLASSES: tuple[str, ...] = ("background", *ORGANS)
DATA_SOURCES: tuple[str, ...] = ("HPA", "Hubmap")


@dataclass(frozen=True)
class Organ:
    name: str
    class_index: int
    ftu: str
    pixel_size: dict[str, float]  # micrometres per pixel, by data source
    thickness: dict[str, float]  # micrometres, by data source


_TABLE = (
    Organ("kidney", 1, "glomeruli", {"HPA": 0.4, "Hubmap": 0.5}, {"HPA": 4.0, "Hubmap": 10.0}),
    Organ("prostate", 2, "glands", {"HPA": 0.4, "Hubmap": 6.263}, {"HPA": 4.0, "Hubmap": 5.0}),
    Organ("largeintestine", 3, "crypts", {"HPA": 0.4, "Hubmap": 0.229}, {"HPA": 4.0, "Hubmap": 8.0}),
    Organ("spleen", 4, "white pulp", {"HPA": 0.4, "Hubmap": 0.4945}, {"HPA": 4.0, "Hubmap": 4.0}),
    Organ("lung", 5, "alveoli", {"HPA": 0.4, "Hubmap": 0.7562}, {"HPA": 4.0, "Hubmap": 5.0}),
)
ORGAN_TABLE: dict[str, Organ] = {o.name: o for o in _TABLE}


def organ(name: str) -> Organ:
    """Look up an organ by its competition name, with a message listing the valid ones."""
    try:
        return ORGAN_TABLE[name]
    except KeyError:
        raise KeyError(f"unknown organ {name!r}; expected one of {', '.join(ORGANS)}") from None


def class_index(name: str) -> int:
    """Class index of an organ (1..5); 0 is background."""
    return organ(name).class_index


def pixel_size(name: str, data_source: str) -> float:
    """Micrometres per pixel of an organ's images from one data source (HPA or Hubmap)."""
    o = organ(name)
    if data_source not in o.pixel_size:
        raise KeyError(f"unknown data_source {data_source!r}; expected one of {', '.join(DATA_SOURCES)}")
    return o.pixel_size[data_source]


# A CSV pixel_size outside this range (um/px) is treated as missing: the competition's span is 0.229 to 6.263.
PIXEL_SIZE_RANGE = (0.05, 50.0)


def valid_pixel_size(value: object) -> bool:
    """A usable um/px value: a finite number inside PIXEL_SIZE_RANGE."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(value) and PIXEL_SIZE_RANGE[0] <= value <= PIXEL_SIZE_RANGE[1]


def image_pixel_size(pixel_size: object, organ: str, data_source: str | None = None) -> tuple[float | None, str]:
    """The um/px to rescale an image from, and a note saying which fallback replaced the CSV value ('' if none).

    Missing, NaN, <= 0 or absurd values fall back to the organ's pixel size for the data source (unknown
    source: Hubmap, the private leaderboard's); an unknown organ gives None, i.e. no rescaling (factor 1).
    """
    if valid_pixel_size(pixel_size):
        return float(pixel_size), ""
    lo, hi = PIXEL_SIZE_RANGE
    what = "missing" if pixel_size is None or pixel_size != pixel_size else f"{pixel_size} outside [{lo:g}, {hi:g}]"
    if organ not in ORGAN_TABLE:
        return None, f"pixel_size {what} and organ {organ!r} unknown: not rescaled by pixel size (factor 1)"
    source = data_source if data_source in DATA_SOURCES else "Hubmap"
    value = ORGAN_TABLE[organ].pixel_size[source]
    unknown = "" if data_source in DATA_SOURCES else f" (data_source {data_source!r} unknown)"
    return value, f"pixel_size {what}: using the {organ} {source} value {value} um/px{unknown}"
