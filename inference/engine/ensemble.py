"""Turn the outputs of several predictors (folds, models) into one FTU probability map and mask.

FTU probability of one model:
- binary model: its sigmoid output;
- multiclass model: the softmax probability of the image's selected class c*. c* is the organ from
  test.csv with use_organ, else the majority class: the non-background class whose argmax pixels
  cover the largest weighted fraction of the image, summed over all multiclass members (one c* for
  the whole ensemble, so folds never average different organs). At threshold 0.5 every pixel kept
  is also an argmax pixel of c*.

Ensembling:
- mean: weighted mean of the members' FTU probabilities, then one threshold (per-organ thresholds
  from a JSON file override it);
- union: OR of each member's own binary mask (member threshold: organ JSON, else the --threshold
  override, else the checkpoint's config.json threshold).

Memory: members run one at a time at their working scale. In mean mode members that share a working
size are summed there and resized once (resizing is linear, so this equals resizing each),
so a full-resolution image costs one float32 accumulator, one resized map and the boolean mask. Resizing to
full resolution averages areas where a working map is larger than the image and is bilinear elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inference.organs import CLASSES, ORGANS, class_index
from inference.engine.predictor import Predictor
from inference.tiling import resize_probs
from inference.engine.sliding import WindowFilter
from inference.engine.tta import predict_views
from inference.thresholds import read_thresholds

ENSEMBLE_MODES = ("mean", "union")


@dataclass
class Member:
    """One predictor and its ensemble weight."""

    predictor: Predictor
    weight: float = 1.0


@dataclass
class Decision:
    """Result for one image at full resolution."""

    probability: np.ndarray  # (H, W) float32 weighted mean FTU probability
    mask: np.ndarray  # (H, W) bool, before post-processing
    class_index: int | None  # selected class for multiclass members; None when all members are binary
    threshold: float  # mean mode: the cut-off used; union mode: the weighted mean of member cut-offs
    capped: bool = False  # some member's working side was cut to max_side
    notes: list[str] = field(default_factory=list)  # fallbacks taken for this image (logged by the caller)


def load_thresholds(path: str | Path) -> dict[str, float]:
    """Read a {"kidney": 0.3, ...} JSON of per-organ thresholds; organs left out use the default.

    A file with per-data-source tables (inference.thresholds) is an error here: a caller without the image's
    data source (a whole slide) cannot choose between them.
    """
    organs, by_source = read_thresholds(path)
    if by_source:
        raise ValueError(f"{path}: per-data-source thresholds ({sorted(by_source)}) need each image's data_source; "
                         "use inference.predict, or a {{organ: threshold}} file here")
    return organs


def majority_class(class_probs: list[np.ndarray], weights: list[float]) -> int:
    """Non-background class covering the largest weighted share of argmax pixels (ties: highest mean probability)."""
    votes = np.zeros(len(CLASSES), dtype=np.float64)
    mass = np.zeros(len(CLASSES), dtype=np.float64)
    for probs, weight in zip(class_probs, weights, strict=True):
        counts = np.bincount(probs.argmax(0).ravel(), minlength=len(CLASSES))
        votes += weight * counts / counts.sum()
        mass += weight * probs.reshape(len(CLASSES), -1).mean(1)
    votes[0] = mass[0] = -1.0
    best = np.flatnonzero(votes == votes.max())
    return int(best[np.argmax(mass[best])])


def ftu_probability(probs: np.ndarray, multiclass: bool, selected: int | None) -> np.ndarray:
    """(h, w) FTU probability of one model's (C, h, w) output (see the module docstring)."""
    if not multiclass:
        return probs[0]
    if selected is None:
        raise ValueError("a multiclass model needs the selected class index")
    return probs[selected]


def member_threshold(
    member: Member, organ: str, organ_thresholds: dict[str, float], override: float | None
) -> float:
    """Cut-off for one member's own mask: organ JSON, else the override, else its config.json threshold."""
    if organ in organ_thresholds:
        return organ_thresholds[organ]
    return override if override is not None else member.predictor.config.threshold


def predict_image(
    image: np.ndarray,
    members: list[Member],
    organ: str,
    pixel_size: float | None = None,
    scale_mode: str = "reduce",
    tta: int = 0,
    mode: str = "mean",
    organ_thresholds: dict[str, float] | None = None,
    threshold: float | None = None,
    use_organ: bool = False,
    max_side: int | None = None,
    coarsen: float = 1.0,
    windows: WindowFilter | None = None,
    scales: tuple[float, ...] = (1.0,),
    views: list[np.ndarray] | None = None,
) -> Decision:
    """Run every member on one (H, W, 3) uint8 image and combine them into a Decision.

    max_side caps each member's working side; coarsen multiplies every working scale (the time budget's
    last resort). use_organ with an organ outside the table falls back to the majority class. `windows`
    (optional) limits every member to the sliding windows over its kept pixels (whole slides). scales (--tta-scales)
    and views (same-sized copies of the image, e.g. stain-normalised) are averaged per member by inference.engine.tta.
    """
    if mode not in ENSEMBLE_MODES:
        raise ValueError(f"ensemble mode {mode!r} not in {ENSEMBLE_MODES}")
    if not members:
        raise ValueError("predict_image needs at least one model")
    organ_thresholds = organ_thresholds or {}
    h, w = image.shape[:2]
    total = float(sum(m.weight for m in members))
    if total <= 0:
        raise ValueError(f"model weights must sum to a positive number, got {[m.weight for m in members]}")

    outputs: list[np.ndarray] = []
    capped = False
    for m in members:
        scale = m.predictor.scale(h, w, scale_mode, pixel_size, max_side, coarsen)
        capped |= scale.capped
        outputs.append(predict_views(m.predictor, [image, *(views or [])], scale.size, tta, scales, windows, max_side))

    multi = [i for i, m in enumerate(members) if m.predictor.multiclass]
    selected = None
    if multi:
        if use_organ and organ in ORGANS:
            selected = class_index(organ)
        else:
            selected = majority_class([outputs[i] for i in multi], [members[i].weight for i in multi])

    by_size: dict[tuple[int, int], np.ndarray] = {}
    mask = np.zeros((h, w), dtype=bool) if mode == "union" else None
    for m, probs in zip(members, outputs, strict=True):
        ftu = ftu_probability(probs, m.predictor.multiclass, selected)
        if mask is not None:
            mask |= resize_probs(ftu[None], h, w)[0] > member_threshold(m, organ, organ_thresholds, threshold)
        weighted = ftu * np.float32(m.weight / total)
        by_size[ftu.shape] = by_size[ftu.shape] + weighted if ftu.shape in by_size else weighted
    outputs.clear()

    probability = np.zeros((h, w), dtype=np.float32)
    for part in by_size.values():
        probability += resize_probs(part[None], h, w)[0]
    member_cuts = [member_threshold(m, organ, organ_thresholds, threshold) * m.weight / total for m in members]
    cut = float(sum(member_cuts))
    if mask is None:
        mask = probability > cut
    return Decision(probability=probability, mask=mask, class_index=selected, threshold=cut, capped=capped)
