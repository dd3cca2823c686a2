"""One row of the table: its image predicted into a RowResult that never raises."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from inference.atomic import atomic_write
from inference.engine.adapt_bn import BatchNormAdaptation
from inference.engine.ensemble import Decision, Member, predict_image
from inference.engine.postprocess import postprocess
from inference.engine.tta import stain_views
from inference.organs import image_pixel_size
from inference.rle import encode, encode_resized
from inference.submission.images import ImageSlot, table_images
from inference.submission.members import row_members
from inference.submission.options import Options
from inference.submission.plan import BudgetPlan
from inference.thresholds import thresholds_for

log = logging.getLogger("inference.predict")


STATUSES = ("ok", "bad", "crashed", "skipped", "no_fold_model", "not_in_folds")


@dataclass
class RowResult:
    """What predict_row did with one row: the RLE and how it got there (journaled as is)."""

    id: str
    rle: str = ""
    status: str = "ok"  # one of STATUSES; every status but ok has an empty rle
    notes: list[str] = field(default_factory=list)  # fallbacks taken (each also logged as "id N: ...")
    dropped: list[str] = field(default_factory=list)  # models left out for non-finite output
    windows: int = 0  # forward windows run (the time budget's unit)
    seconds: float = 0.0  # time the row took (journaled: a restarted child's budget starts from it)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:  # the summary counts statuses by name: a typo would count nowhere
            raise ValueError(f"RowResult status {self.status!r} not in {STATUSES}")
        if self.status != "ok" and self.rle:
            raise ValueError(f"RowResult status {self.status!r} must have an empty rle")


def save_probability(path: Path, probability: np.ndarray, max_side: int) -> None:
    """Write a probability map as float16 .npy, area-downscaled so its longer side is at most max_side."""
    h, w = probability.shape
    factor = min(1.0, max_side / max(h, w))
    if factor < 1.0:
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        probability = cv2.resize(probability, size, interpolation=cv2.INTER_AREA)
    with atomic_write(path, "wb", suffix=".npy") as handle:
        np.save(handle, probability.astype(np.float16))


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free_cuda() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _predict_retrying(
    image: np.ndarray, organ: str, pixel_size: float | None, members: list[Member], options: Options,
    notes: list[str],
) -> Decision:
    """predict_image; on CUDA out-of-memory retry with batch size 1, then also without TTA (each noted).

    "Without TTA" drops every extra view: flips, TTA ratios and stain views.
    """
    views = stain_views(image, options.stain_reference, options.stain_tta) if options.stain_tta else None
    try:
        return predict_image(image, members, organ, pixel_size, options, views=views)
    except RuntimeError as exc:
        if not _is_oom(exc):
            raise
        notes.append("CUDA out of memory: retried with batch size 1")
    _free_cuda()  # outside the except block, which keeps the failed frame's tensors alive
    sizes = [m.predictor.batch_size for m in members]
    try:
        for m in members:
            m.predictor.batch_size = 1
        try:
            return predict_image(image, members, organ, pixel_size, options, views=views)
        except RuntimeError as exc:
            if not _is_oom(exc) or (options.tta == 0 and tuple(options.tta_scales) == (1.0,) and not views):
                raise
            notes.append(f"CUDA out of memory at batch size 1: retried without TTA (was {options.tta} flip views, "
                         f"ratios {list(options.tta_scales)}, {len(views or [])} stain view(s))")
        _free_cuda()
        return predict_image(image, members, organ, pixel_size, dataclasses.replace(options, tta=0, tta_scales=(1.0,)))
    finally:
        for m, size in zip(members, sizes, strict=True):
            m.predictor.batch_size = size


def predict_one(
    image: np.ndarray,
    organ: str,
    pixel_size: float | None,
    members: list[Member],
    options: Options,
    *,
    data_source: str | None = None,
    image_id: object = None,
    out_size: tuple[int, int] | None = None,
) -> tuple[str, Decision]:
    """RLE of one image's post-processed mask, and the ensemble decision it came from.

    A missing or absurd pixel_size falls back to the organ's (image_pixel_size); post-processing that fails
    keeps the raw mask; out_size resizes the mask (nearest) to the size the CSV expects. Every fallback is
    logged as a warning naming image_id and listed in decision.notes.
    """
    notes: list[str] = []
    if options.source_thresholds:
        options = dataclasses.replace(options, organ_thresholds=thresholds_for(
            options.organ_thresholds, options.source_thresholds, data_source))
    resolved, note = image_pixel_size(pixel_size, organ, data_source)
    if note and (options.scale_mode == "pixel-size" or options.min_area_um2.get(organ, 0) > 0):
        notes.append(note)
    decision = _predict_retrying(image, organ, resolved, members, options, notes)
    notes += decision.notes
    decision.notes = []
    if decision.capped:
        notes.append(f"working side capped at --max-side {options.max_side} px (image {image.shape[1]}x"
                     f"{image.shape[0]}); finer structures may be missed")
    try:
        mask = postprocess(decision.mask, organ, resolved, options.fill_holes, options.min_area_um2)
    except Exception as exc:  # a clean-up must never cost the row: keep the raw mask
        notes.append(f"post-processing failed ({type(exc).__name__}: {exc}): raw mask kept")
        mask = decision.mask
    for note in notes:
        log.warning("id %s: %s", image_id, note)
    decision.notes += notes
    if out_size is not None and mask.shape != tuple(out_size):
        return encode_resized(mask, *out_size), decision
    return encode(mask), decision


def predict_row(
    row: object,
    image_dir: Path,
    members: list[Member],
    options: Options,
    folds: dict[str, int] | None = None,
    plan: BudgetPlan | None = None,
    number: int = 0,
    adaptation: BatchNormAdaptation | None = None,
    slot: ImageSlot | None = None,
) -> RowResult:
    """Predict one test.csv row into a RowResult; never raises (a failure is an empty row, logged, counted).

    slot: the row's image slot (inference.submission.images; default: read image_dir/<id>.tiff here).
    adaptation (--adapt-bn) loads the statistics of the row's group into its members first.
    """
    image_id = str(row.id)
    fold = None
    if folds is not None:
        fold = folds.get(image_id)
        if fold is None:
            return RowResult(image_id, status="not_in_folds")
        if not row_members(members, fold, ()):
            return RowResult(image_id, status="no_fold_model")
    if slot is None:
        slot = next(table_images([row], image_dir, options.image_reference, options.max_image_side))
    notes: list[str] = []
    try:
        expected = (int(row.img_height), int(row.img_width))
        level = windows = None
        if plan is not None:  # asked before decoding: a row the budget skips is never read or stain-normalised
            declared = expected if min(expected) > 0 else plan.typical
            level, windows = plan.choose(number, row, *declared)
            if level is None:
                return RowResult(image_id, status="skipped")
        loaded = slot.load()
        notes += loaded.notes
        if loaded.error is not None:
            raise loaded.error
        image = loaded.seen
        out_size = None
        if min(expected) > 0 and image.shape[:2] != expected:
            out_size = expected
            notes.append(f"image is {image.shape[0]}x{image.shape[1]} but the CSV says {expected[0]}x{expected[1]}: "
                         "mask resized to the CSV size")
        for note in notes:
            log.warning("id %s: %s", image_id, note)
        if plan is not None and image.shape[:2] != declared:  # planned on a size the image does not have
            level, windows = plan.choose(number, row, *image.shape[:2])
            if level is None:
                return RowResult(image_id, status="skipped", notes=notes)
        kept = row_members(members, fold, level.dropped if level else ())
        opts = options.with_level(level) if level else options
        if adaptation is not None:
            adaptation.use(adaptation.key(row), kept)
        rle, decision = predict_one(image, row.organ, row.pixel_size, kept, opts,
                                    data_source=row.data_source, image_id=image_id, out_size=out_size)
    except Exception as exc:  # the submission loop must finish: empty mask, warning, counted
        log.warning("id %s: empty prediction (%s: %s)", image_id, type(exc).__name__, exc)
        return RowResult(image_id, status="bad", notes=[*notes, f"{type(exc).__name__}: {exc}"])
    result = RowResult(image_id, rle, notes=notes + decision.notes, dropped=decision.dropped, windows=windows or 0)
    if options.save_probs is not None:
        try:
            save_probability(options.save_probs / f"{image_id}.npy", decision.probability,
                             options.save_probs_max_side)
        except Exception as exc:  # the mask is good: keep the row, report the missing map
            log.warning("id %s: --save-probs failed (%s: %s): mask kept", image_id, type(exc).__name__, exc)
            result.notes.append(f"--save-probs failed: {exc}")
    return result
