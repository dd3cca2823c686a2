"""The organ table: class indices, physical pixel sizes and tissue thickness per data source.

Class order is fixed for every model in this repo: 0 = background, then the organs in the order the
competition lists them. Values come from the competition data page (see ../shared/DOMAIN.md).
"""

from __future__ import annotations

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
