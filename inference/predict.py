"""Predict FTU masks for every image of a competition-layout folder and write submission.csv.

    python -m inference.predict --data-dir DIR --models RUN_DIR [RUN_DIR ...] --out submission.csv
        [--ensemble mean|union] [--weights W ...] [--thresholds organs.json] [--threshold T]
        [--tta 0|2|4|8] [--tta-scales 0.8,1,1.2] [--stain-tta [macenko,reinhard]] [--adapt-bn [--adapt-bn-windows N]]
        [--scale-mode pixel-size|reduce|none] [--max-side 4608] [--organ-from csv|model] [--fill-holes]
        [--min-area UM2|organs.json] [--save-probs DIR] [--split test|train] [--folds folds.csv]
        [--time-budget SECONDS] [--journal PATH] [--max-image-side 30000] [--device auto|cpu|cuda]

RUN_DIR is a checkpoint folder (config.json + weights) or a run folder holding fold*/ checkpoint
folders (all folds are used; a --weights value is shared equally by the folds of its RUN_DIR).

The submission loop never exits early: every id of test.csv (or train.csv with --split train) gets a row,
in the CSV's order. The loop is predict_table over predict_row, one RowResult per row. Bad CSV values
(unknown organ or data_source, missing pixel_size or size, short or long lines, bytes that are not UTF-8)
are warnings with the fallbacks of inference.tables.load_test_lenient; an id that is not a plain file name,
an image that cannot be read, is larger than --max-image-side or fails to predict gets an empty mask; a model
whose output is not finite is left out of that image; an image whose size differs from the CSV is predicted
and its mask resized to the CSV size; a failing post-processing or --save-probs keeps the raw mask; a CUDA
out-of-memory is retried with batch size 1, then without TTA. Every such event is a `WARNING ... id N: ...`
line, counted in the summary.

Every finished row goes to the journal (--journal, default OUT.journal; see inference.journal) as it is done:
re-running the same command after a crash resumes there, and the row the crashed process was predicting
becomes an empty row. run_supervised is how the Kaggle notebook uses it: the prediction runs in a child
process, restarted after a crash, and write_from_journal writes submission.csv in test.csv order whatever
happened.

Multiclass models predict the test.csv organ's class (--organ-from csv, the default; 1st place's USE_ORGAN); a
missing or unknown organ falls back to the majority class, which --organ-from model uses for every image.
--thresholds takes per-organ or per-data-source-and-organ cut-offs (inference.thresholds). --tta-scales and
--stain-tta add multi-scale and stain-normalised views (inference.engine.tta); --adapt-bn re-estimates encoder
BatchNorm statistics per data_source first (inference.engine.adapt_bn).

--scale-mode pixel-size (default) resamples each image to the checkpoint's um/px (see inference.engine.predictor).
--time-budget stops the run from overrunning (see inference.engine.budget). --folds makes each checkpoint predict
only the images of its own validation fold (config.json fold; fold -1 checkpoints are left out), so
--split train --save-probs DIR gives out-of-fold maps for inference.tune_thresholds. --save-probs writes
each image's ensemble FTU probability as DIR/<id>.npy (float16, longer side at most --save-probs-max-side).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from inference.cli import HelpFormatter
from inference.engine.adapt_bn import (
    DEFAULT_IMAGES,
    DEFAULT_WINDOWS,
    GROUPINGS,
    BatchNormAdaptation,
    adapt_batchnorm,
)
from inference.engine.budget import Level, TimeBudget, degradation_levels
from inference.engine.ensemble import (
    Decision,
    EnsembleOptions,
    Member,
    add_ensemble_arguments,
    bounded,
    member_windows,
    positive_float,
    positive_int,
    predict_image,
)
from inference.engine.models import resolve_checkpoints, resolve_device
from inference.engine.postprocess import load_min_area, postprocess
from inference.engine.predictor import load_predictor
from inference.engine.tta import STAIN_METHODS, parse_stain_methods, stain_views
from inference.io import MAX_IMAGE_SIDE, check_side, read_image
from inference.journal import Journal, finished_rows, read_records
from inference.organs import image_pixel_size
from inference.rle import encode
from inference.tables import TableError, load_folds, load_sample_submission_lenient, load_test_lenient
from inference.thresholds import thresholds_for

log = logging.getLogger("inference.predict")


@dataclass
class Options(EnsembleOptions):
    """EnsembleOptions plus what the submission loop adds (defaults = inference.predict without flags)."""

    fill_holes: bool = False
    min_area_um2: dict[str, float] = field(default_factory=dict)
    save_probs: Path | None = None
    save_probs_max_side: int = 1024
    stain_reference: str | None = None  # Macenko-normalise images to this reference JSON, or "macenko"
    max_image_side: int | None = MAX_IMAGE_SIDE  # refuse larger images (declared or decoded) as bad rows
    stain_tta: tuple[str, ...] = ()  # views normalised to stain_reference by these methods, beside the image as is
    source_thresholds: dict[str, dict[str, float]] = field(default_factory=dict)  # {data_source: {organ: t}}
    adapt_bn: bool = False  # AdaBN: encoder BatchNorm statistics per group (inference.engine.adapt_bn)
    adapt_bn_windows: int = DEFAULT_WINDOWS  # windows per member and group
    adapt_bn_images: int = DEFAULT_IMAGES  # images drawn per group
    adapt_bn_groups: str = GROUPINGS[0]  # "source-organ" (one group per data_source and organ) or "source"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.stain_tta = tuple(self.stain_tta)
        bad = sorted(set(self.stain_tta) - set(STAIN_METHODS))
        if bad:
            raise ValueError(f"stain_tta methods must be among {list(STAIN_METHODS)}, got {bad}")
        if self.stain_tta and self.stain_reference is None:
            raise ValueError("--stain-tta needs --stain-reference (the training stain: python -m inference.stain)")
        if self.adapt_bn_windows < 1 or self.adapt_bn_images < 1:
            raise ValueError("--adapt-bn-windows and --adapt-bn-images must be >= 1")
        if self.adapt_bn_groups not in GROUPINGS:
            raise ValueError(f"--adapt-bn-groups must be one of {GROUPINGS}, got {self.adapt_bn_groups!r}")

    def with_level(self, level: Level) -> Options:
        """A copy at a time-budget level: EnsembleOptions' knobs plus the stain views kept."""
        return dataclasses.replace(super().with_level(level), stain_tta=level.stain)

    @property
    def image_reference(self) -> str | None:
        """The reference the image itself is normalised to: none under stain TTA, which keeps it as it is too."""
        return None if self.stain_tta else self.stain_reference


def load_members(
    models: list[Path], weights: list[float] | None, device: str, batch_size: int, blend: str
) -> list[Member]:
    """Expand RUN_DIRs into checkpoint folders and load each; a RUN_DIR's weight is split over its folds.

    A folder that cannot be loaded raises RuntimeError naming the --models entry, the folder and the cause.
    """
    if weights is not None and len(weights) != len(models):
        raise ValueError(f"--weights has {len(weights)} value(s) for {len(models)} --models entries")
    dev = resolve_device(device)
    members = []
    for i, run in enumerate(models):
        folders = resolve_checkpoints(run)
        share = (weights[i] if weights is not None else 1.0) / len(folders)
        for folder in folders:
            try:
                members.append(Member(load_predictor(folder, dev, batch_size, blend), share))
            except FileNotFoundError:
                raise
            except Exception as exc:  # a corrupt config.json or weights file: say which fold, never a traceback
                raise RuntimeError(f"--models {run}: cannot load checkpoint {folder}: {exc}") from exc
    return members


def save_probability(path: Path, probability: np.ndarray, max_side: int) -> None:
    """Write a probability map as float16 .npy, area-downscaled so its longer side is at most max_side."""
    h, w = probability.shape
    factor = min(1.0, max_side / max(h, w))
    if factor < 1.0:
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        probability = cv2.resize(probability, size, interpolation=cv2.INTER_AREA)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, probability.astype(np.float16))
    tmp.replace(path)


def _images(
    table: pd.DataFrame, image_dir: Path, stain_reference: str | None = None
) -> Iterator[tuple[object, np.ndarray | Exception]]:
    """Yield (row, image or the read error), reading the next image in a thread while one is predicted.

    stain_reference (--stain-reference): Macenko-normalise each image to it in the reading thread.
    """
    reference = None
    if stain_reference is not None:
        from inference.stain import load_reference, normalise_stain  # only kernels that ask for it need torchstain

        reference = load_reference(stain_reference)

    def read(row: object) -> np.ndarray | Exception:
        try:
            image = read_image(image_dir / f"{row.id}.tiff")
            return image if reference is None else normalise_stain(image, reference)
        except Exception as exc:  # reported per image by the caller, never fatal
            return exc

    rows = list(table.itertuples(index=False))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, rows[0]) if rows else None
        for i, row in enumerate(rows):
            image = pending.result()
            pending = pool.submit(read, rows[i + 1]) if i + 1 < len(rows) else None
            yield row, image


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


def encode_resized(mask: np.ndarray, height: int, width: int, columns: int = 256) -> str:
    """RLE of a mask nearest-resized to (height, width), built a strip of columns at a time.

    Equals encode(cv2.resize(mask, (width, height), INTER_NEAREST)) without holding the resized mask: a CSV
    size up to --max-image-side costs height x `columns` bytes, not height x width.
    """
    ys = np.minimum((np.arange(height) * (mask.shape[0] / height)).astype(np.int64), mask.shape[0] - 1)
    xs = np.minimum((np.arange(width) * (mask.shape[1] / width)).astype(np.int64), mask.shape[1] - 1)
    rows = mask.astype(bool)[ys]  # (height, w_src): the row mapping once, columns strip by strip
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    previous, offset = False, 0
    for x0 in range(0, width, columns):
        flat = rows[:, xs[x0 : x0 + columns]].T.ravel()  # column-major pixels of this strip
        padded = np.concatenate([[previous], flat])
        changes = np.flatnonzero(padded[1:] != padded[:-1]) + offset  # index of the first pixel after a change
        rising = flat[changes - offset]
        starts.append(changes[rising])
        ends.append(changes[~rising])
        previous, offset = bool(flat[-1]), offset + flat.size
    start, end = np.concatenate(starts), np.concatenate(ends)
    if previous:
        end = np.append(end, offset)
    if not start.size:
        return ""
    return " ".join(f"{s + 1} {e - s}" for s, e in zip(start.tolist(), end.tolist(), strict=True))


def oof_members(members: list[Member]) -> list[Member]:
    """Members usable for out-of-fold prediction: fold -1 checkpoints (trained on every image) are left out."""
    kept = []
    for m in members:
        if m.predictor.config.fold < 0:
            log.warning("--folds: %s has fold %d (trained on all data): left out", m.predictor.name,
                        m.predictor.config.fold)
        else:
            kept.append(m)
    return kept


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


@dataclass
class Run:
    """What predict_table did: the submission and every id that needs a person's attention."""

    submission: pd.DataFrame
    results: list[RowResult] = field(default_factory=list)
    budget: TimeBudget | None = None
    resumed: int = 0  # rows taken from the journal of an earlier run

    def _ids(self, *statuses: str) -> list[str]:
        return [r.id for r in self.results if r.status in statuses]

    @property
    def bad(self) -> list[str]:
        """Empty rows: unreadable or refused image, failed prediction, or the row a crashed run died on."""
        return self._ids("bad", "crashed")

    @property
    def crashed(self) -> list[str]:
        return self._ids("crashed")

    @property
    def no_fold_model(self) -> list[str]:
        return self._ids("no_fold_model")

    @property
    def not_in_folds(self) -> list[str]:
        return self._ids("not_in_folds")

    @property
    def warned(self) -> list[str]:
        """Rows with a prediction that took a fallback (see the log)."""
        return [r.id for r in self.results if r.status == "ok" and r.notes]

    @property
    def dropped(self) -> list[str]:
        """Rows where at least one model was left out for non-finite output."""
        return [r.id for r in self.results if r.dropped]


def _row_members(
    members: list[Member], fold: int | None, dropped: tuple[int, ...]
) -> list[Member]:
    """The members for one image: its fold's checkpoints under --folds, minus those the time budget dropped."""
    own = [i for i, m in enumerate(members) if fold is None or m.predictor.config.fold == fold]
    kept = [i for i in own if i not in dropped]
    if own and not kept:  # the budget never leaves an image without a model
        kept = [max(own, key=lambda i: members[i].weight)]
    return [members[i] for i in kept]


def plain_file_name(image_id: str) -> bool:
    """True for an id that names a file inside test_images/ (no separator, no '..', nothing outside it)."""
    return (bool(image_id) and image_id not in (".", "..") and "\x00" not in image_id
            and Path(image_id).name == image_id and "/" not in image_id and "\\" not in image_id)


class BudgetPlan:
    """The time budget over one table: every row's forward windows at every level, known before predicting it.

    Rows whose CSV size is unknown count as the median known size. rest[n] holds, per level, the windows of the
    rows to predict after row n.
    """

    def __init__(self, budget: TimeBudget, rows: list, todo: list[int], members: list[Member],
                 options: Options, folds: dict[str, int] | None) -> None:
        self.budget, self.members, self.options, self.folds = budget, members, options, folds
        known = [(int(r.img_height), int(r.img_width)) for r in rows if int(r.img_height) > 0 and int(r.img_width) > 0]
        typical = tuple(int(v) for v in np.median(known, axis=0)) if known else (3000, 3000)
        self.rest: dict[int, list[float]] = {}
        total = [0.0] * len(budget.levels)
        for n in reversed(todo):
            self.rest[n] = list(total)
            r = rows[n]
            h, w = (int(r.img_height), int(r.img_width)) if int(r.img_height) > 0 and int(r.img_width) > 0 else typical
            total = [t + c for t, c in zip(total, self.windows(r, h, w), strict=True)]

    def _fold(self, row: object) -> int | None:
        return None if self.folds is None else self.folds.get(str(row.id))

    def windows(self, row: object, height: int, width: int) -> list[int]:
        """This row's forward windows at each level, for an image of (height, width)."""
        if self.folds is not None and self._fold(row) is None:
            return [0] * len(self.budget.levels)
        pixel_size = image_pixel_size(row.pixel_size, row.organ, row.data_source)[0]
        out = []
        for level in self.budget.levels:
            opts = self.options.with_level(level)
            kept = _row_members(self.members, self._fold(row), level.dropped)
            views = 1 + len(opts.stain_tta)  # the image as is and each stain view
            out.append(sum(member_windows(m, height, width, pixel_size, opts, views) for m in kept))
        return out

    def choose(self, n: int, row: object, height: int, width: int) -> tuple[Level | None, int]:
        """The level for row n at its real size (None: skip it) and the windows it will run."""
        work = self.windows(row, height, width)
        level = self.budget.choose(work, self.rest[n], image_number=n, image_id=str(row.id))
        return level, (work[self.budget.levels.index(level)] if level is not None else 0)


def predict_row(
    row: object,
    image_dir: Path,
    members: list[Member],
    options: Options,
    folds: dict[str, int] | None = None,
    plan: BudgetPlan | None = None,
    number: int = 0,
    adaptation: BatchNormAdaptation | None = None,
) -> RowResult:
    """Predict one test.csv row into a RowResult; never raises (a failure is an empty row, logged, counted).

    adaptation (--adapt-bn) loads the statistics of the row's group into its members first.
    """
    image_id = str(row.id)
    fold = None
    if folds is not None:
        fold = folds.get(image_id)
        if fold is None:
            return RowResult(image_id, status="not_in_folds")
        if not _row_members(members, fold, ()):
            return RowResult(image_id, status="no_fold_model")
    notes: list[str] = []
    try:
        if not plain_file_name(image_id):
            raise ValueError(f"id {image_id!r} is not a plain file name: not read (it would name a path outside "
                             "the images folder)")
        expected = (int(row.img_height), int(row.img_width))
        check_side(*expected, options.max_image_side, "the CSV size")
        image = read_image(image_dir / f"{image_id}.tiff", options.max_image_side, notes)
        if options.image_reference is not None:
            image = _normalise(image, options.image_reference)
        out_size = None
        if min(expected) > 0 and image.shape[:2] != expected:
            out_size = expected
            notes.append(f"image is {image.shape[0]}x{image.shape[1]} but the CSV says {expected[0]}x{expected[1]}: "
                         "mask resized to the CSV size")
        for note in notes:
            log.warning("id %s: %s", image_id, note)
        level, windows = plan.choose(number, row, *image.shape[:2]) if plan is not None else (None, 0)
        if plan is not None and level is None:
            return RowResult(image_id, status="skipped", notes=notes)
        row_members = _row_members(members, fold, level.dropped if level else ())
        opts = options.with_level(level) if level else options
        if adaptation is not None:
            adaptation.use(adaptation.key(row), row_members)
        rle, decision = predict_one(image, row.organ, row.pixel_size, row_members, opts,
                                    data_source=row.data_source, image_id=image_id, out_size=out_size)
    except Exception as exc:  # the submission loop must finish: empty mask, warning, counted
        log.warning("id %s: empty prediction (%s: %s)", image_id, type(exc).__name__, exc)
        return RowResult(image_id, status="bad", notes=[*notes, f"{type(exc).__name__}: {exc}"])
    result = RowResult(image_id, rle, notes=notes + decision.notes, dropped=decision.dropped, windows=windows)
    if options.save_probs is not None:
        try:
            save_probability(options.save_probs / f"{image_id}.npy", decision.probability,
                             options.save_probs_max_side)
        except Exception as exc:  # the mask is good: keep the row, report the missing map
            log.warning("id %s: --save-probs failed (%s: %s): mask kept", image_id, type(exc).__name__, exc)
            result.notes.append(f"--save-probs failed: {exc}")
    return result


_REFERENCES: dict[str, object] = {}


def _normalise(image: np.ndarray, reference: str) -> np.ndarray:
    """Macenko-normalise to a --stain-reference (loaded once; only kernels that ask for it need torchstain)."""
    from inference.stain import load_reference, normalise_stain

    if reference not in _REFERENCES:
        _REFERENCES[reference] = load_reference(reference)
    return normalise_stain(image, _REFERENCES[reference])


def run_fingerprint(table: pd.DataFrame, image_dir: Path, members: list[Member], options: Options,
                    folds: dict[str, int] | None) -> str:
    """A digest of everything that decides the rows: the table, the images folder, the models, the options."""
    models = []
    for m in members:
        path = Path(m.predictor.name) / m.predictor.config.weights
        stat = path.stat() if path.is_file() else None
        models.append([m.predictor.name, m.weight, stat.st_size if stat else None, stat.st_mtime if stat else None])
    blob = json.dumps({"table": table.to_csv(index=False), "images": str(Path(image_dir).resolve()),
                       "models": models, "options": dataclasses.asdict(options), "folds": folds},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def predict_table(
    table: pd.DataFrame,
    image_dir: Path,
    members: list[Member],
    options: Options,
    time_budget: float | None = None,
    folds: dict[str, int] | None = None,
    start: float | None = None,
    journal: Path | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Run:
    """RLE of the predicted mask of every row of a test/train table, with what went wrong where.

    time_budget (seconds, counted from `start` on `clock`) degrades settings as inference.engine.budget
    describes; folds (id -> fold) restricts each image to the checkpoints of its own validation fold; journal
    records each finished row and resumes from an earlier run of the same settings (inference.journal).
    """
    if options.save_probs is not None:
        options.save_probs.mkdir(parents=True, exist_ok=True)
    rows = list(table.itertuples(index=False))
    book = Journal(journal, run_fingerprint(table, image_dir, members, options, folds)) if journal else None
    results = _resume(book, rows)
    resumed, todo = len(results), [n for n in range(len(rows)) if n not in results]
    budget = plan = None
    adaptation = None
    try:
        if options.adapt_bn and todo:  # before the budget's plan: its time counts as elapsed like any other
            adaptation = _adapt(table, image_dir, members, options, book)
        if time_budget is not None:
            levels = degradation_levels(options.tta, [m.weight for m in members], tta_scales=options.tta_scales,
                                        stain=options.stain_tta)
            budget = TimeBudget(time_budget, levels, start=start, clock=clock)
            plan = BudgetPlan(budget, rows, todo, members, options, folds)
        with logging_redirect_tqdm():
            for n in tqdm(todo, desc="predict", unit="img"):
                began = clock()
                results[n] = _journaled(book, n, rows[n], partial(predict_row, rows[n], image_dir, members, options,
                                                                  folds, plan, n, adaptation))
                if budget is not None and results[n].status == "ok":
                    budget.record(clock() - began, results[n].windows)
    finally:
        if adaptation is not None:
            adaptation.restore()
        if book is not None:
            book.close()
    ordered = [results[n] for n in range(len(rows))]
    submission = pd.DataFrame({"id": table["id"].astype(str).to_numpy(), "rle": [r.rle for r in ordered]})
    return Run(submission, ordered, budget, resumed)


def _adapt(table: pd.DataFrame, image_dir: Path, members: list[Member], options: Options,
           book: Journal | None) -> BatchNormAdaptation:
    """adapt_batchnorm over the whole table, its images read as predict_row reads them, each under a journal claim.

    The whole table, not only the rows left, so a resumed run adapts exactly as the first one did; an image that
    killed an earlier run while AdaBN read it is that run's crashed row, left out here and empty in the loop.
    """
    def read(row: object) -> np.ndarray:
        n, image_id = int(row.Index), str(row.id)
        if book is not None and n in book.crashed:
            raise RuntimeError("an earlier run died on this row")
        if not plain_file_name(image_id):
            raise ValueError(f"id {image_id!r} is not a plain file name")
        check_side(int(row.img_height), int(row.img_width), options.max_image_side, "the CSV size")
        if book is not None:
            book.claim(n, image_id)  # a decoder that kills the process blames this row, as in the loop
        try:
            return read_image(image_dir / f"{image_id}.tiff", options.max_image_side)
        finally:
            if book is not None:
                book.release(n)

    return adapt_batchnorm(
        table, image_dir, members, windows=options.adapt_bn_windows, max_images=options.adapt_bn_images,
        scale_mode=options.scale_mode, max_side=options.max_side, stain_reference=options.image_reference, read=read,
        grouping=options.adapt_bn_groups)


def _resume(book: Journal | None, rows: list) -> dict[int, RowResult]:
    """The rows an earlier run of the same settings finished (row number -> result)."""
    if book is None:
        return {}
    results = {n: RowResult(**{k: record[k] for k in RowResult.__dataclass_fields__ if k in record})
               for n, record in book.done.items() if n < len(rows) and record.get("id") == str(rows[n].id)}
    if results:
        log.info("journal %s: %d of %d row(s) already done, resuming", book.path, len(results), len(rows))
    return results


def _journaled(book: Journal | None, n: int, row: object, predict: Callable[[], RowResult]) -> RowResult:
    """predict() between a claim and a done record; a row an earlier run died on is not tried again."""
    if book is not None and n in book.crashed:
        note = "the previous run died while predicting this row (out of memory, a crashing decoder?): empty row"
        log.warning("id %s: %s", row.id, note)
        result = RowResult(str(row.id), status="crashed", notes=[note])
    else:
        if book is not None:
            book.claim(n, str(row.id))
        try:
            result = predict()
        except KeyboardInterrupt:  # the user stopped the run: this row is not to blame
            if book is not None:
                book.release(n)
            raise
    if book is not None:
        book.finish(n, dataclasses.asdict(result))
    return result


def write_submission(df: pd.DataFrame, path: Path) -> None:
    """Write id,rle atomically (a half-written submission never replaces a good one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)


def write_from_journal(data_dir: Path, journal: Path, out: Path, split: str = "test") -> pd.DataFrame:
    """Write OUT with one row per id of DATA/<split>.csv in its order, RLEs from the journal ("" where missing).

    The kernel's last step, whatever the prediction child did. Without a readable <split>.csv the ids come
    from sample_submission.csv (read as leniently); without either, OUT holds the header only.
    """
    try:
        ids = load_test_lenient(data_dir / f"{split}.csv")[0]["id"].astype(str).tolist()
    except TableError as exc:
        log.warning("%s; ids taken from sample_submission.csv", exc)
        try:
            ids = load_sample_submission_lenient(data_dir / "sample_submission.csv")[0]
        except TableError as exc2:
            log.error("%s: the submission has no rows", exc2)
            ids = []
    done = finished_rows(read_records(journal)[1])
    rles = [done[n].get("rle", "") if n in done and done[n].get("id") == i else "" for n, i in enumerate(ids)]
    missing = sum(1 for n, i in enumerate(ids) if not (n in done and done[n].get("id") == i))
    if missing:
        log.warning("%d of %d row(s) have no journaled result: written empty", missing, len(ids))
    submission = pd.DataFrame({"id": ids, "rle": rles})
    write_submission(submission, out)
    return submission


def run_supervised(argv: list[str], journal: Path, time_budget: float | None = None, max_restarts: int = 25,
                   python: str = sys.executable) -> int:
    """Run `python -m inference.predict ARGV --journal JOURNAL` in a child process until it finishes.

    A child that dies (killed by the OOM killer, a crashing decoder) is restarted: it resumes from the journal,
    the row it died on becoming an empty row. time_budget (seconds from now) is split so that each child gets
    what is left. Stops after max_restarts, when a child dies without adding to the journal, or on exit 2
    (bad input: a restart would fail the same way). Returns the last child's exit status.
    """
    deadline = time.perf_counter() + time_budget if time_budget is not None else None
    env = dict(os.environ)
    code = str(Path(__file__).resolve().parents[1])  # the folder holding this inference package
    env["PYTHONPATH"] = os.pathsep.join([code, *filter(None, [env.get("PYTHONPATH")])])
    restarts = 0
    while True:
        before = journal.stat().st_size if journal.is_file() else 0
        budget = [] if deadline is None else ["--time-budget", f"{max(deadline - time.perf_counter(), 1.0):.0f}"]
        cmd = [python, "-m", "inference.predict", *argv, "--journal", str(journal), *budget]
        child = subprocess.Popen(cmd, env=env)
        print(f"prediction child pid {child.pid}", flush=True)
        status = child.wait()
        if status in (0, 2):
            return status
        grew = journal.is_file() and journal.stat().st_size > before
        print(f"prediction child {child.pid} died (exit status {status})", flush=True)
        if restarts >= max_restarts or not grew:
            log.error("prediction child died %s: giving up (%d restart(s))",
                      "without progress" if not grew else "too often", restarts)
            return status
        restarts += 1
        log.warning("restarting the prediction after the row in progress (restart %d of at most %d)",
                    restarts, max_restarts)


def _min_area(text: str) -> dict[str, float]:
    """argparse type of --min-area (a number of um^2 or an organ JSON), checked at parse time."""
    try:
        return load_min_area(text)
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser(allow_abbrev: bool = True) -> argparse.ArgumentParser:
    """The CLI; kernels.build parses --predict-args with allow_abbrev=False so every option is spelled out."""
    ap = argparse.ArgumentParser(
        prog="python -m inference.predict", description=__doc__, formatter_class=HelpFormatter,
        allow_abbrev=allow_abbrev,
    )
    ap.add_argument("--data-dir", type=Path, required=True, help="folder with test.csv + test_images/ (or train)")
    ap.add_argument("--out", type=Path, default=Path("submission.csv"), help="submission CSV to write")
    ap.add_argument("--split", choices=("test", "train"), default="test", help="predict test.csv or train.csv")
    add_ensemble_arguments(ap, by_source=True)
    ap.add_argument("--stain-reference",
                    help="Macenko-normalise every image to this reference JSON (python -m inference.stain) or "
                         "'macenko' (needs torchstain)")
    ap.add_argument("--stain-tta", type=parse_stain_methods, nargs="?", const=STAIN_METHODS, default=(),
                    metavar="METHODS",
                    help=f"also predict each image normalised to --stain-reference by these methods (comma list of "
                         f"{','.join(STAIN_METHODS)}; bare flag: both) and average the probabilities")
    ap.add_argument("--adapt-bn", action="store_true",
                    help="AdaBN: re-estimate each member's encoder BatchNorm statistics on random windows of each "
                         "group's images before predicting them (smp and scripted models; traced ones warn)")
    ap.add_argument("--adapt-bn-windows", type=positive_int, default=DEFAULT_WINDOWS,
                    help="--adapt-bn windows per member and group")
    ap.add_argument("--adapt-bn-images", type=positive_int, default=DEFAULT_IMAGES,
                    help="--adapt-bn images drawn per group")
    ap.add_argument("--adapt-bn-groups", choices=GROUPINGS, default=GROUPINGS[0],
                    help="--adapt-bn groups: one per data_source and organ (default), or one per data_source")
    ap.add_argument("--fill-holes", action="store_true", help="fill holes in predicted masks")
    ap.add_argument("--min-area", dest="min_area_um2", type=_min_area, default={}, metavar="UM2|JSON",
                    help="drop components under this area in um^2 (number or organ JSON)")
    ap.add_argument("--save-probs", type=Path, help="write DIR/<id>.npy float16 FTU probabilities")
    ap.add_argument("--save-probs-max-side", type=positive_int, default=1024,
                    help="longer side of saved probability maps")
    ap.add_argument("--max-image-side", type=bounded(int, 1, zero_is_none=True), default=MAX_IMAGE_SIDE,
                    help="refuse images (declared in the CSV or in the TIFF header) with a longer side, as bad "
                         "rows, before decoding (0: no cap)")
    ap.add_argument("--folds", type=Path,
                    help="folds.csv (id,fold): each checkpoint predicts only its own validation fold's images")
    ap.add_argument("--time-budget", type=positive_float,
                    help="seconds (> 0) for the whole run (from start-up): drop stain TTA, then TTA ratios, then flip "
                         "views, then the lowest-weight members, then working scale to finish inside it")
    ap.add_argument("--journal", type=Path,
                    help="journal of finished rows, resumed by a re-run of the same command; None: OUT.journal")
    ap.add_argument("--limit", type=bounded(int, 1), help="predict only the first N rows (smoke runs)")
    return ap


def options_from_args(args: argparse.Namespace) -> Options:
    """Options of a parsed command line (no flags gives exactly Options())."""
    options = Options.from_args(args)
    if "reinhard" in options.stain_tta:
        from inference.stain import load_reference

        if not load_reference(options.stain_reference).has_reinhard:
            raise ValueError(f"--stain-tta reinhard: --stain-reference {options.stain_reference} has no Reinhard "
                             "statistics; refit it with python -m inference.stain, or pass --stain-tta macenko")
    return options


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        table, notes = load_test_lenient(args.data_dir / f"{args.split}.csv")
        options = options_from_args(args)
        folds = load_folds(args.folds) if args.folds else None
        members = load_members(args.models, args.weights, args.device, args.batch_size, args.blend)
        if folds is not None:
            members = oof_members(members)
            if not members:
                raise ValueError("--folds: every checkpoint has fold -1; out-of-fold prediction needs fold >= 0")
    except (TableError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.limit is not None:
        table = table.head(args.limit)
    ids = set(table["id"])
    for where, note in notes:
        if where in ids or not where.isdigit():
            log.warning("id %s: %s" if where in ids else "%s: %s", where, note)
    begin = time.perf_counter()
    journal = args.journal or args.out.with_name(args.out.name + ".journal")
    run = predict_table(table, args.data_dir / f"{args.split}_images", members, options,
                        time_budget=args.time_budget, folds=folds, start=start, journal=journal)
    write_submission(run.submission, args.out)
    seconds = time.perf_counter() - begin
    submission, bad = run.submission, run.bad
    warned = sorted({i for i, _ in notes if i in ids} | set(run.warned), key=list(table["id"]).index)
    filled = int((submission["rle"] != "").sum())
    predicted = max(len(submission) - run.resumed, 1)
    print(
        f"wrote {args.out}: {len(submission)} rows, {filled} non-empty, {len(bad)} bad image(s)"
        f"{' ' + str(bad[:10]) if bad else ''}, {len(warned)} with warnings{' ' + str(warned[:10]) if warned else ''}"
        f"; {len(members)} model(s) on {members[0].predictor.device}, {seconds / predicted:.2f} s/image"
        f"{f'; {run.resumed} row(s) resumed from {journal}' if run.resumed else ''}"
    )
    if run.dropped:
        print(f"{len(run.dropped)} image(s) had a model left out for non-finite output {run.dropped[:10]}")
    if run.crashed:
        print(f"{len(run.crashed)} row(s) empty because an earlier run died on them {run.crashed[:10]}")
    if run.budget is not None:
        print(run.budget.summary())
    if folds is not None:
        predicted = len(submission) - len(run.no_fold_model) - len(run.not_in_folds)
        print(f"--folds: {predicted} image(s) predicted out of fold by {len(members)} checkpoint(s); "
              f"{len(run.no_fold_model)} whose fold has no checkpoint {run.no_fold_model[:10]}; "
              f"{len(run.not_in_folds)} not in {args.folds} {run.not_in_folds[:10]}")
    if len(submission) and not filled:
        log.error("EVERY ROW OF %s IS EMPTY: this submission scores 0; check the warnings above (models, "
                  "thresholds, images)", args.out)
    return 1 if bad and len(bad) == len(submission) else 0


if __name__ == "__main__":
    sys.exit(main())
