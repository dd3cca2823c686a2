"""Turn the outputs of several predictors (folds, models) into one FTU probability map and mask.

FTU probability of one model:
- binary model: its sigmoid output;
- multiclass model: the softmax probability of the image's selected class c*. c* is the organ given (test.csv's,
  or --organ for a slide) with organ_from "csv", the default, where that organ is known; else the majority class: the non-background class whose argmax pixels
  cover the largest weighted fraction of the image, summed over all multiclass members (one c* for
  the whole ensemble, so folds never average different organs). At threshold 0.5 every pixel kept
  is also an argmax pixel of c*.

Ensembling:
- mean: weighted mean of the members' FTU probabilities, then one threshold (per-organ thresholds
  from a JSON file override it; inference.predict also takes per-data-source ones, inference.thresholds);
- union: OR of each member's own binary mask (member threshold: organ JSON, else the --threshold
  override, else the checkpoint's config.json threshold).

Views: each member averages its probabilities over the --tta flips, the --tta-scales ratios and any same-sized
copies of the image passed as `views` (stain TTA) before the ensemble combines them (inference.engine.tta).

Memory: members run one at a time at their working scale. In mean mode members that share a working
size are summed there and resized once (resizing is linear, so this equals resizing each),
so a full-resolution image costs one float32 accumulator, one resized map and the boolean mask. Resizing to
full resolution averages areas where a working map is larger than the image and is bilinear elsewhere.

Finite or dropped: a member whose probabilities hold NaN or inf for an image (a bad fp16 export, a diverged
fold) is left out of that image, the others are re-weighted, and Decision.dropped names it; an image with no
finite member is an error (the caller's bad row).

One interface: EnsembleOptions is everything besides the models that decides predict_image, and
add_ensemble_arguments adds its flags (plus the member-loading flags) to a parser. inference.predict,
inference.wsi and the kernel use both; a new option is one field here and one argument there, because
EnsembleOptions.from_args reads every field from the argument of the same dest. The defaults of
EnsembleOptions are the command line's.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from inference.cli import hidden_alias
from inference.engine.predictor import DEFAULT_MAX_SIDE, DEFAULT_SCALE_MODE, SCALE_MODES, Predictor
from inference.engine.sliding import BLENDS, TTA_SIZES, WindowFilter
from inference.engine.tta import parse_scales, predict_views
from inference.organs import CLASSES, ORGANS, class_index
from inference.thresholds import read_thresholds
from inference.tiling import resize_probs, scaled_size, window_starts

ENSEMBLE_MODES = ("mean", "union")
ORGAN_FROM = ("csv", "model")  # multiclass class choice: the organ given, or the majority class of the prediction


@dataclass
class EnsembleOptions:
    """Everything besides the models that decides predict_image (defaults = the command line without flags)."""

    ensemble: str = "mean"
    tta: int = 0
    scale_mode: str = DEFAULT_SCALE_MODE
    max_side: int | None = DEFAULT_MAX_SIDE  # cap on every working side (None: no cap)
    organ_thresholds: dict[str, float] = field(default_factory=dict)
    threshold: float | None = None
    organ_from: str = "csv"  # multiclass: "csv" = the organ given (majority class where unknown), "model" = majority
    tta_scales: tuple[float, ...] = (1.0,)  # multi-scale TTA ratios (inference.engine.tta); (1,) = single scale
    coarsen: float = 1.0  # extra factor on every working scale (the time budget's last resort); no flag

    def __post_init__(self) -> None:
        if self.ensemble not in ENSEMBLE_MODES:
            raise ValueError(f"ensemble mode {self.ensemble!r} not in {ENSEMBLE_MODES}")
        if self.tta not in TTA_SIZES:
            raise ValueError(f"tta must be one of {TTA_SIZES}, got {self.tta}")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.organ_from not in ORGAN_FROM:
            raise ValueError(f"organ_from must be one of {ORGAN_FROM}, got {self.organ_from!r}")
        self.tta_scales = parse_scales(",".join(map(str, self.tta_scales)))  # the checks of --tta-scales, a tuple

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: object) -> EnsembleOptions:
        """The options of a parsed command line: each field from the argument of the same dest, then overrides."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}  # never share the default
        return cls(**{**values, **overrides})

    def with_level(self, level: object) -> EnsembleOptions:
        """A copy at a time-budget level (inference.engine.budget.Level: flips, TTA ratios, coarsen)."""
        return replace(self, tta=level.tta, coarsen=level.coarsen, tta_scales=level.tta_scales)


def bounded(kind: Callable[[str], float], low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False, zero_is_none: bool = False) -> Callable[[str], object]:
    """An argparse type: a finite `kind` number within [low, high] (open ends where asked), else exit 2 naming it."""
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    allowed = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    if zero_is_none:
        allowed += " or 0 (none)"

    def parse(text: str) -> object:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__} in {allowed}, got {text!r}") from None
        if zero_is_none and value == 0:
            return None
        ok = math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            raise argparse.ArgumentTypeError(f"must be a {kind.__name__} in {allowed}, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


probability = bounded(float, 0.0, 1.0, low_open=True, high_open=True)
positive_float = bounded(float, 0.0, low_open=True)
positive_int = bounded(int, 1)


def thresholds_file(text: str) -> dict[str, float]:
    """argparse type of --thresholds: the organ JSON, read and checked now (a bad file is exit 2 naming it)."""
    try:
        return load_thresholds(text)
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def source_thresholds_file(text: str) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """argparse type of --thresholds where rows have a data_source: (organ table, {source: organ table})."""
    try:
        return read_thresholds(text)
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _SplitThresholds(argparse.Action):
    """--thresholds by source: the organ table to organ_thresholds, the per-source tables to source_thresholds."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        namespace.organ_thresholds, namespace.source_thresholds = values


def add_ensemble_arguments(parser: argparse.ArgumentParser, scale: bool = True,
                           by_source: bool = False, thresholds: bool = True) -> argparse.ArgumentParser:
    """The flags of EnsembleOptions and of member loading (--models, --weights, --blend, --window-batch, --device).

    scale=False leaves out --scale-mode and --max-side (whole slides always work at the models' um/px).
    by_source=True lets --thresholds hold per-data-source tables too, parsed into a `source_thresholds` dest
    (inference.predict, whose rows have a data_source; a slide has none). thresholds=False leaves out --thresholds
    and --threshold (train.pseudo_label cuts the probability with its own --low / --high).
    """
    ap = parser.add_argument_group("models and ensemble")
    ap.add_argument("--models", type=Path, nargs="+", required=True, help="checkpoint or run folder(s)")
    ap.add_argument("--weights", type=positive_float, nargs="+",
                    help="one weight > 0 per --models entry (default equal)")
    ap.add_argument("--ensemble", choices=ENSEMBLE_MODES, default="mean",
                    help="mean: weighted mean probability, one cut-off; union: OR of member masks")
    if thresholds and by_source:
        parser.set_defaults(source_thresholds={})
        ap.add_argument("--thresholds", dest="organ_thresholds", type=source_thresholds_file, default={},
                        action=_SplitThresholds, metavar="JSON",
                        help='thresholds JSON, each in (0, 1): per organ {"kidney": 0.3, ...} or per data source '
                             'and organ {"HPA": {...}, "Hubmap": {"lung": 0.06}} (inference.thresholds)')
    elif thresholds:
        ap.add_argument("--thresholds", dest="organ_thresholds", type=thresholds_file, default={}, metavar="JSON",
                        help='per-organ thresholds JSON {"kidney": 0.3, ...}, each in (0, 1)')
    if thresholds:
        ap.add_argument("--threshold", type=probability,
                        help="cut-off in (0, 1) for organs not in --thresholds; None: the checkpoints' config.json")
    ap.add_argument("--tta", type=int, choices=TTA_SIZES, default=0, help="flip views: 0 none, 2, 4, 8 dihedral")
    ap.add_argument("--tta-scales", type=parse_scales, default=(1.0,), metavar="R[,R...]",
                    help="multi-scale TTA: working-scale ratios (e.g. 0.8,1,1.2), each with the --tta flips, "
                         "probabilities resized back and averaged; 1 = single scale")
    ap.add_argument("--organ-from", choices=ORGAN_FROM, default="csv",
                    help="multiclass models: csv = the class of the organ given (test.csv's, or --organ for a "
                         "slide; the majority class where it is missing or unknown); model = the majority class")
    ap.add_argument("--use-organ", dest="organ_from", action="store_const", const="csv",
                    help=argparse.SUPPRESS)  # the old opt-in spelling of today's default
    ap.add_argument("--blend", choices=BLENDS, default="gaussian", help="sliding-window blending weights")
    ap.add_argument("--window-batch", dest="batch_size", type=positive_int, default=4,
                    help="sliding windows per forward pass (>= 1)")
    hidden_alias(parser, "--batch-size", "--window-batch")  # the old spelling (a training batch elsewhere)
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda[:n]")
    if scale:
        ap.add_argument("--scale-mode", choices=SCALE_MODES, default=DEFAULT_SCALE_MODE,
                        help="pixel-size: resample to the checkpoint's um/px from the CSV pixel_size (organ value "
                             "when missing; reduce rule for checkpoints without pixel_size); reduce: config reduce "
                             "or ceil(max(h,w)/(tile*reduce_k)); none: as is")
        ap.add_argument("--max-side", type=bounded(int, 32, zero_is_none=True), default=DEFAULT_MAX_SIDE,
                        help="cap on the working side in pixels, with a warning naming the image (0: no cap)")
    return parser


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
    dropped: list[str] = field(default_factory=list)  # members left out: non-finite probabilities


def load_thresholds(path: str | Path) -> dict[str, float]:
    """Read a {"kidney": 0.3, ...} JSON of per-organ thresholds; organs left out use the default.

    A file with per-data-source tables (inference.thresholds) is an error here: a caller without the image's
    data source (a whole slide) cannot choose between them.
    """
    organs, by_source = read_thresholds(path)
    if by_source:
        raise ValueError(f"{path}: per-data-source thresholds ({sorted(by_source)}) need each image's data_source; "
                         "use inference.predict, or a {organ: threshold} file here")
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


def member_windows(member: Member, height: int, width: int, pixel_size: float | None,
                   options: EnsembleOptions, views: int = 1) -> int:
    """Forward windows one member runs on a (height, width) image (no image needed).

    The sliding windows at each --tta-scales ratio's working size (as inference.engine.tta resamples it), summed
    over the ratios, x the flip views, x `views` (the image plus its stain TTA copies).
    """
    p = member.predictor
    size = p.scale(height, width, options.scale_mode, pixel_size, options.max_side, options.coarsen).size
    tile, stride = p.config.tile_size, p.stride
    sizes = [size] if tuple(options.tta_scales) == (1.0,) else [
        scaled_size(*size, r, options.max_side) for r in options.tta_scales]
    count = sum(len(window_starts(max(h, tile), tile, stride)) * len(window_starts(max(w, tile), tile, stride))
                for h, w in sizes)
    return count * max(options.tta, 1) * max(views, 1)


def predict_image(
    image: np.ndarray,
    members: list[Member],
    organ: str,
    pixel_size: float | None = None,
    options: EnsembleOptions | None = None,
    windows: WindowFilter | None = None,
    views: list[np.ndarray] | None = None,
) -> Decision:
    """Run every member on one (H, W, 3) uint8 image and combine them into a Decision.

    options (default: the command line's defaults) give the ensemble mode, TTA flips and ratios, scale rule,
    max_side cap, coarsen factor and thresholds. organ_from "csv" with an organ outside the table falls back to
    the majority class. `windows` (optional) limits every member to the sliding windows over its kept pixels
    (whole slides). `views`: same-sized copies of the image (stain TTA) each member also predicts and averages.
    A member with non-finite probabilities is dropped for this image (see the module docstring).
    """
    options = options or EnsembleOptions()
    if not members:
        raise ValueError("predict_image needs at least one model")
    organ_thresholds = options.organ_thresholds
    h, w = image.shape[:2]
    if float(sum(m.weight for m in members)) <= 0:
        raise ValueError(f"model weights must sum to a positive number, got {[m.weight for m in members]}")

    kept: list[Member] = []
    outputs: list[np.ndarray] = []
    dropped: list[str] = []
    capped = False
    for m in members:
        scale = m.predictor.scale(h, w, options.scale_mode, pixel_size, options.max_side, options.coarsen)
        probs = predict_views(m.predictor, [image, *(views or [])], scale.size, options.tta, options.tta_scales,
                              windows, options.max_side)
        if not np.isfinite(probs).all():  # one NaN member would poison the mean and empty every mask
            dropped.append(m.predictor.name)
            continue
        capped |= scale.capped
        kept.append(m)
        outputs.append(probs)
    if not kept:
        raise ValueError(f"every model gave non-finite probabilities: {dropped}")
    members = kept
    total = float(sum(m.weight for m in members))

    multi = [i for i, m in enumerate(members) if m.predictor.multiclass]
    selected = None
    if multi:
        if options.organ_from == "csv" and organ in ORGANS:
            selected = class_index(organ)
        else:
            selected = majority_class([outputs[i] for i in multi], [members[i].weight for i in multi])

    by_size: dict[tuple[int, int], np.ndarray] = {}
    mask = np.zeros((h, w), dtype=bool) if options.ensemble == "union" else None
    for m, probs in zip(members, outputs, strict=True):
        ftu = ftu_probability(probs, m.predictor.multiclass, selected)
        if mask is not None:
            cut = member_threshold(m, organ, organ_thresholds, options.threshold)
            mask |= resize_probs(ftu[None], h, w)[0] > cut
        weighted = ftu * np.float32(m.weight / total)
        by_size[ftu.shape] = by_size[ftu.shape] + weighted if ftu.shape in by_size else weighted
    outputs.clear()

    probability = np.zeros((h, w), dtype=np.float32)
    for part in by_size.values():
        probability += resize_probs(part[None], h, w)[0]
    member_cuts = [member_threshold(m, organ, organ_thresholds, options.threshold) * m.weight / total
                   for m in members]
    cut = float(sum(member_cuts))
    if mask is None:
        mask = probability > cut
    notes = [f"model {name} gave non-finite probabilities: left out of this image, the others re-weighted"
             for name in dropped]
    return Decision(probability=probability, mask=mask, class_index=selected, threshold=cut, capped=capped,
                    notes=notes, dropped=dropped)
