"""Predict FTU masks for every image of a competition-layout folder and write submission.csv.

    python -m inference.predict --data-dir DIR --models RUN_DIR [RUN_DIR ...] --out submission.csv
        [--ensemble mean|union] [--weights W ...] [--thresholds organs.json] [--threshold T]
        [--tta 0|2|4|8] [--tta-scales 0.8,1,1.2] [--stain-tta [macenko,reinhard]] [--adapt-bn [--adapt-bn-windows N]]
        [--scale-mode pixel-size|reduce|none] [--max-side 4608] [--organ-from csv|model] [--fill-holes]
        [--min-area UM2|organs.json] [--save-probs DIR] [--split test|train] [--folds folds.csv]
        [--time-budget SECONDS] [--device auto|cpu|cuda]

RUN_DIR is a checkpoint folder (config.json + weights) or a run folder holding fold*/ checkpoint
folders (all folds are used; a --weights value is shared equally by the folds of its RUN_DIR).

The submission loop never exits early: every id of test.csv (or train.csv with --split train) gets a row,
in the CSV's order. Bad CSV values (unknown organ or data_source, missing pixel_size or size) are warnings
with the fallbacks of inference.tables.load_test_lenient; an image that cannot be read or fails to predict
gets an empty mask; an image whose size differs from the CSV is predicted and its mask resized to the CSV
size; a failing post-processing or --save-probs keeps the raw mask; a CUDA out-of-memory is retried with
batch size 1, then without TTA. Every such event is a `WARNING ... id N: ...` line, counted in the summary.

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
import logging
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from inference.engine.adapt_bn import DEFAULT_IMAGES, DEFAULT_WINDOWS, adapt_batchnorm
from inference.engine.budget import TimeBudget, degradation_levels
from inference.engine.ensemble import ENSEMBLE_MODES, Decision, Member, predict_image
from inference.io import read_image
from inference.engine.postprocess import load_min_area, postprocess
from inference.engine.models import resolve_checkpoints, resolve_device
from inference.engine.predictor import DEFAULT_MAX_SIDE, DEFAULT_SCALE_MODE, load_predictor, SCALE_MODES
from inference.organs import image_pixel_size
from inference.rle import encode
from inference.engine.sliding import BLENDS, TTA_SIZES
from inference.engine.tta import parse_scales, parse_stain_methods, stain_views, STAIN_METHODS
from inference.tables import TableError, load_test_lenient
from inference.thresholds import read_thresholds, thresholds_for

log = logging.getLogger("inference.predict")


@dataclass
class Options:
    """Everything that decides a prediction besides the models (defaults = inference.predict without flags)."""

    ensemble: str = "mean"
    tta: int = 0
    scale_mode: str = DEFAULT_SCALE_MODE
    organ_thresholds: dict[str, float] = field(default_factory=dict)
    threshold: float | None = None
    organ_from: str = "csv"  # multiclass: "csv" = the row's organ (majority class where unknown), "model" = majority
    fill_holes: bool = False
    min_area_um2: dict[str, float] = field(default_factory=dict)
    save_probs: Path | None = None
    save_probs_max_side: int = 1024
    max_side: int | None = DEFAULT_MAX_SIDE  # cap on every working side (None: no cap)
    coarsen: float = 1.0  # extra factor on every working scale (the time budget's last resort)
    stain_reference: str | None = None  # Macenko-normalise images to this reference JSON, or "macenko"
    tta_scales: tuple[float, ...] = (1.0,)  # multi-scale TTA ratios (inference.engine.tta); (1,) = single scale
    stain_tta: tuple[str, ...] = ()  # also predict each image normalised to stain_reference by these methods
    source_thresholds: dict[str, dict[str, float]] = field(default_factory=dict)  # {data_source: {organ: t}}
    adapt_bn: bool = False  # AdaBN: encoder BatchNorm statistics per data_source (inference.engine.adapt_bn)
    adapt_bn_windows: int = DEFAULT_WINDOWS  # windows per member and data source
    adapt_bn_images: int = DEFAULT_IMAGES  # images drawn per data source


def load_members(
    models: list[Path], weights: list[float] | None, device: str, batch_size: int, blend: str
) -> list[Member]:
    """Expand RUN_DIRs into checkpoint folders and load each; a RUN_DIR's weight is split over its folds."""
    if weights is not None and len(weights) != len(models):
        raise ValueError(f"--weights has {len(weights)} value(s) for {len(models)} --models entries")
    dev = resolve_device(device)
    members = []
    for i, run in enumerate(models):
        folders = resolve_checkpoints(run)
        share = (weights[i] if weights is not None else 1.0) / len(folders)
        members += [Member(load_predictor(f, dev, batch_size, blend), share) for f in folders]
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
    image: np.ndarray, organ: str, pixel_size: float | None, members: list[Member], options: Options, notes: list[str]
) -> Decision:
    """predict_image; on CUDA out-of-memory retry with batch size 1, then also without TTA (each noted)."""
    views = stain_views(image, options.stain_reference, options.stain_tta) if options.stain_tta else None

    def run(tta: int, extra_views: bool = True) -> Decision:
        return predict_image(
            image, members, organ=organ, pixel_size=pixel_size, scale_mode=options.scale_mode, tta=tta,
            mode=options.ensemble, organ_thresholds=options.organ_thresholds, threshold=options.threshold,
            use_organ=options.organ_from == "csv", max_side=options.max_side, coarsen=options.coarsen,
            scales=options.tta_scales if extra_views else (1.0,), views=views if extra_views else None,
        )

    try:
        return run(options.tta)
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
            return run(options.tta)
        except RuntimeError as exc:
            if not _is_oom(exc) or (options.tta == 0 and options.tta_scales == (1.0,) and views is None):
                raise
            notes.append(f"CUDA out of memory at batch size 1: retried without TTA (was {options.tta} views)")
        _free_cuda()
        return run(0, extra_views=False)
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
    if decision.capped:
        notes.append(f"working side capped at --max-side {options.max_side} px (image {image.shape[1]}x"
                     f"{image.shape[0]}); finer structures may be missed")
    try:
        mask = postprocess(decision.mask, organ, resolved, options.fill_holes, options.min_area_um2)
    except Exception as exc:  # a clean-up must never cost the row: keep the raw mask
        notes.append(f"post-processing failed ({type(exc).__name__}: {exc}): raw mask kept")
        mask = decision.mask
    if out_size is not None and mask.shape != tuple(out_size):
        mask = cv2.resize(mask.view(np.uint8), (out_size[1], out_size[0]), interpolation=cv2.INTER_NEAREST) > 0
    for note in notes:
        log.warning("id %s: %s", image_id, note)
    decision.notes += notes
    return encode(mask), decision


def load_folds(path: Path) -> dict[str, int]:
    """id -> fold from a folds.csv (columns id, fold; ids as the CSV spells them)."""
    if not path.is_file():
        raise FileNotFoundError(f"--folds {path} not found (the seeded split data_prep.make_folds writes)")
    df = pd.read_csv(path, dtype=str)
    if not {"id", "fold"} <= set(df.columns):
        raise ValueError(f"{path}: expected columns id,fold; found {list(df.columns)}")
    return {i.strip(): int(f) for i, f in zip(df["id"], df["fold"], strict=True)}


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


@dataclass
class Run:
    """What predict_table did: the submission and every id that needs a person's attention."""

    submission: pd.DataFrame
    bad: list[str] = field(default_factory=list)  # empty row: unreadable image or failed prediction
    warned: list[str] = field(default_factory=list)  # a fallback was taken (see the log)
    no_fold_model: list[str] = field(default_factory=list)  # --folds: the image's fold has no checkpoint
    not_in_folds: list[str] = field(default_factory=list)  # --folds: the id is not in folds.csv
    budget: TimeBudget | None = None


def _row_members(
    members: list[Member], fold: int | None, dropped: tuple[int, ...]
) -> list[Member]:
    """The members for one image: its fold's checkpoints under --folds, minus those the time budget dropped."""
    own = [i for i, m in enumerate(members) if fold is None or m.predictor.config.fold == fold]
    kept = [i for i in own if i not in dropped]
    if own and not kept:  # the budget never leaves an image without a model
        kept = [max(own, key=lambda i: members[i].weight)]
    return [members[i] for i in kept]


def predict_table(
    table: pd.DataFrame,
    image_dir: Path,
    members: list[Member],
    options: Options,
    time_budget: float | None = None,
    folds: dict[str, int] | None = None,
    start: float | None = None,
) -> Run:
    """RLE of the predicted mask of every row of a test/train table, with what went wrong where.

    time_budget (seconds, counted from `start`) degrades settings as inference.engine.budget describes; folds
    (id -> fold) restricts each image to the checkpoints of its own validation fold.
    """
    if options.save_probs is not None:
        options.save_probs.mkdir(parents=True, exist_ok=True)
    budget = None
    if time_budget is not None:
        levels = degradation_levels(options.tta, [m.weight for m in members], tta_scales=options.tta_scales,
                                    stain=options.stain_tta)
        budget = TimeBudget(time_budget, levels, start=start)
    run = Run(pd.DataFrame(), budget=budget)
    adaptation = None
    if options.adapt_bn and len(table):
        adaptation = adapt_batchnorm(
            table, image_dir, members, windows=options.adapt_bn_windows, max_images=options.adapt_bn_images,
            scale_mode=options.scale_mode, max_side=options.max_side,
            stain_reference=None if options.stain_tta else options.stain_reference)
    rles = []
    last = time.perf_counter()  # per-image wall time includes waiting for the prefetched read
    with logging_redirect_tqdm():
        reference = None if options.stain_tta else options.stain_reference  # stain TTA keeps the image as it is too
        rows = tqdm(_images(table, image_dir, reference), total=len(table), desc="predict", unit="img")
        for n, (row, image) in enumerate(rows):
            rles.append("")
            image_id = str(row.id)
            fold = None
            if folds is not None:
                fold = folds.get(image_id)
                if fold is None:
                    run.not_in_folds.append(image_id)
                    continue
            level = budget.choose(n, len(table) - n, image_id) if budget is not None else None
            if budget is not None and level is None:
                continue
            row_members = _row_members(members, fold, level.dropped if level else ())
            if not row_members:
                run.no_fold_model.append(image_id)
                continue
            opts = dataclasses.replace(options, tta=level.tta, coarsen=level.coarsen, tta_scales=level.tta_scales,
                                       stain_tta=level.stain) if level else options
            if adaptation is not None:
                adaptation.use(row.data_source, row_members)
            try:
                if isinstance(image, Exception):
                    raise image
                expected = (int(row.img_height), int(row.img_width))
                out_size = None
                if min(expected) > 0 and image.shape[:2] != expected:
                    out_size = expected
                    log.warning("id %s: image is %dx%d but the CSV says %dx%d: mask resized to the CSV size",
                                image_id, image.shape[0], image.shape[1], *expected)
                    run.warned.append(image_id)
                rle, decision = predict_one(image, row.organ, row.pixel_size, row_members, opts,
                                            data_source=row.data_source, image_id=image_id, out_size=out_size)
                rles[-1] = rle
                if decision.notes and image_id not in run.warned:
                    run.warned.append(image_id)
                if options.save_probs is not None:
                    try:
                        save_probability(options.save_probs / f"{image_id}.npy", decision.probability,
                                         options.save_probs_max_side)
                    except Exception as exc:  # the mask is good: keep the row, report the missing map
                        log.warning("id %s: --save-probs failed (%s: %s): mask kept", image_id,
                                    type(exc).__name__, exc)
                        if image_id not in run.warned:
                            run.warned.append(image_id)
            except Exception as exc:  # the submission loop must finish: empty mask, warning, counted
                log.warning("id %s: empty prediction (%s: %s)", image_id, type(exc).__name__, exc)
                run.bad.append(image_id)
                rles[-1] = ""
            now = time.perf_counter()
            if budget is not None and not isinstance(image, Exception):
                budget.record(now - last, level)
            last = now
    if adaptation is not None:
        adaptation.restore()
    run.submission = pd.DataFrame({"id": table["id"].astype(str).to_numpy(), "rle": rles})
    return run


def write_submission(df: pd.DataFrame, path: Path) -> None:
    """Write id,rle atomically (a half-written submission never replaces a good one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)


def build_parser(allow_abbrev: bool = True) -> argparse.ArgumentParser:
    """The CLI; kernels.build parses --predict-args with allow_abbrev=False so every option is spelled out."""
    ap = argparse.ArgumentParser(
        prog="python -m inference.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=allow_abbrev,
    )
    ap.add_argument("--data-dir", type=Path, required=True, help="folder with test.csv + test_images/ (or train)")
    ap.add_argument("--models", type=Path, nargs="+", required=True, help="checkpoint or run folder(s)")
    ap.add_argument("--out", type=Path, default=Path("submission.csv"), help="submission CSV to write")
    ap.add_argument("--split", choices=("test", "train"), default="test", help="predict test.csv or train.csv")
    ap.add_argument("--ensemble", choices=ENSEMBLE_MODES, default="mean")
    ap.add_argument("--weights", type=float, nargs="+", help="one weight per --models entry (default equal)")
    ap.add_argument("--thresholds", type=Path,
                    help='thresholds JSON: per organ {"kidney": 0.3, ...} or per data source and organ '
                         '{"HPA": {...}, "Hubmap": {"lung": 0.06, ...}} (inference.thresholds)')
    ap.add_argument("--threshold", type=float, help="cut-off for organs not in --thresholds (default: config.json)")
    ap.add_argument("--tta", type=int, choices=TTA_SIZES, default=0, help="flip views: 0 none, 2, 4, 8 dihedral")
    ap.add_argument("--tta-scales", type=parse_scales, default=(1.0,), metavar="R[,R...]",
                    help="multi-scale TTA: working-scale ratios (e.g. 0.8,1,1.2), each with the --tta flips, "
                         "probabilities resized back and averaged; 1 = single scale")
    ap.add_argument("--stain-tta", type=parse_stain_methods, nargs="?", const=STAIN_METHODS, default=(),
                    metavar="METHODS",
                    help=f"also predict each image normalised to --stain-reference by these methods (comma list of "
                         f"{','.join(STAIN_METHODS)}; bare flag: both) and average the probabilities")
    ap.add_argument("--adapt-bn", action="store_true",
                    help="AdaBN: re-estimate each member's encoder BatchNorm statistics on random windows of each "
                         "data_source's images before predicting them (smp and scripted models; traced ones warn)")
    ap.add_argument("--adapt-bn-windows", type=int, default=DEFAULT_WINDOWS,
                    help="--adapt-bn windows per member and data source")
    ap.add_argument("--adapt-bn-images", type=int, default=DEFAULT_IMAGES,
                    help="--adapt-bn images drawn per data source")
    ap.add_argument("--scale-mode", choices=SCALE_MODES, default=DEFAULT_SCALE_MODE,
                    help="pixel-size: resample to the checkpoint's um/px from the CSV pixel_size (organ value when "
                         "missing; reduce rule for checkpoints without pixel_size); reduce: config reduce or "
                         "ceil(max(h,w)/(tile*reduce_k)); none: as is")
    ap.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                    help="cap on the working side in pixels, with a warning naming the image (0: no cap)")
    ap.add_argument("--stain-reference",
                    help="Macenko-normalise every image to this reference JSON (python -m inference.stain) or "
                         "'macenko' (needs torchstain)")
    ap.add_argument("--organ-from", choices=("csv", "model"), default="csv",
                    help="multiclass models: csv = the test.csv organ's class (the majority class where the organ is "
                         "missing or unknown); model = the majority class of the prediction")
    ap.add_argument("--use-organ", dest="organ_from", action="store_const", const="csv",
                    help=argparse.SUPPRESS)  # the old opt-in spelling of today's default
    ap.add_argument("--fill-holes", action="store_true", help="fill holes in predicted masks")
    ap.add_argument("--min-area", help="drop components under this area in um^2 (number or organ JSON)")
    ap.add_argument("--blend", choices=BLENDS, default="gaussian", help="sliding-window blending weights")
    ap.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda[:n]")
    ap.add_argument("--save-probs", type=Path, help="write DIR/<id>.npy float16 FTU probabilities")
    ap.add_argument("--save-probs-max-side", type=int, default=1024, help="longer side of saved probability maps")
    ap.add_argument("--folds", type=Path,
                    help="folds.csv (id,fold): each checkpoint predicts only its own validation fold's images")
    ap.add_argument("--time-budget", type=float,
                    help="seconds for the whole run (from start-up): drop TTA views, then the lowest-weight "
                         "members, then working scale to finish inside it")
    ap.add_argument("--limit", type=int, help="predict only the first N rows (smoke runs)")
    return ap


def options_from_args(args: argparse.Namespace) -> Options:
    """Options of a parsed command line (no flags gives exactly Options())."""
    organ_thresholds, source_thresholds = read_thresholds(args.thresholds) if args.thresholds else ({}, {})
    if args.stain_tta:
        if args.stain_reference is None:
            raise ValueError("--stain-tta needs --stain-reference (the training stain: python -m inference.stain)")
        if "reinhard" in args.stain_tta:
            from inference.stain import load_reference

            if not load_reference(args.stain_reference).has_reinhard:
                raise ValueError(f"--stain-tta reinhard: --stain-reference {args.stain_reference} has no Reinhard "
                                 "statistics; refit it with python -m inference.stain, or pass --stain-tta macenko")
    if args.adapt_bn and (args.adapt_bn_windows < 1 or args.adapt_bn_images < 1):
        raise ValueError("--adapt-bn-windows and --adapt-bn-images must be >= 1")
    return Options(
        ensemble=args.ensemble, tta=args.tta, scale_mode=args.scale_mode,
        organ_thresholds=organ_thresholds, source_thresholds=source_thresholds,
        threshold=args.threshold, organ_from=args.organ_from, fill_holes=args.fill_holes,
        min_area_um2=load_min_area(args.min_area), save_probs=args.save_probs,
        save_probs_max_side=args.save_probs_max_side, max_side=args.max_side or None,
        stain_reference=args.stain_reference, tta_scales=args.tta_scales, stain_tta=args.stain_tta,
        adapt_bn=args.adapt_bn, adapt_bn_windows=args.adapt_bn_windows, adapt_bn_images=args.adapt_bn_images,
    )


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args = build_parser().parse_args(argv)
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
    for image_id, note in notes:
        if image_id in ids or not image_id.isdigit():
            log.warning("id %s: %s", image_id, note)
    begin = time.perf_counter()
    run = predict_table(table, args.data_dir / f"{args.split}_images", members, options,
                        time_budget=args.time_budget, folds=folds, start=start)
    write_submission(run.submission, args.out)
    seconds = time.perf_counter() - begin
    submission, bad = run.submission, run.bad
    warned = sorted({i for i, _ in notes if i in ids} | set(run.warned), key=list(table["id"]).index)
    filled = int((submission["rle"] != "").sum())
    print(
        f"wrote {args.out}: {len(submission)} rows, {filled} non-empty, {len(bad)} bad image(s)"
        f"{' ' + str(bad[:10]) if bad else ''}, {len(warned)} with warnings{' ' + str(warned[:10]) if warned else ''}"
        f"; {len(members)} model(s) on {members[0].predictor.device}, {seconds / max(len(submission), 1):.2f} s/image"
    )
    if run.budget is not None:
        print(run.budget.summary())
    if folds is not None:
        predicted = len(submission) - len(run.no_fold_model) - len(run.not_in_folds)
        print(f"--folds: {predicted} image(s) predicted out of fold by {len(members)} checkpoint(s); "
              f"{len(run.no_fold_model)} whose fold has no checkpoint {run.no_fold_model[:10]}; "
              f"{len(run.not_in_folds)} not in {args.folds} {run.not_in_folds[:10]}")
    return 1 if bad and len(bad) == len(submission) else 0


if __name__ == "__main__":
    sys.exit(main())
