"""Predict FTU masks for every image of a competition-layout folder and write submission.csv.

    python -m inference.predict --data-dir DIR --models RUN_DIR [RUN_DIR ...] --out submission.csv
        [--ensemble mean|union] [--weights W ...] [--thresholds organs.json] [--threshold T]
        [--tta 0|2|4|8] [--scale-mode reduce|pixel-size|none] [--use-organ] [--fill-holes]
        [--min-area UM2|organs.json] [--save-probs DIR] [--split test|train] [--device auto|cpu|cuda]

RUN_DIR is a checkpoint folder (config.json + weights) or a run folder holding fold*/ checkpoint
folders (all folds are used; a --weights value is shared equally by the folds of its RUN_DIR).
Every id of test.csv (or train.csv with --split train) gets a row, in the CSV's order; an image that
cannot be read, has a size other than the CSV says, or fails to predict gets an empty mask and a
warning, and is counted in the summary line. --save-probs writes each image's ensemble FTU
probability as DIR/<id>.npy (float16, longer side at most --save-probs-max-side) for
inference.tune_thresholds.
"""

from __future__ import annotations

import argparse
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
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from inference.ensemble import ENSEMBLE_MODES, Decision, Member, load_thresholds, predict_image
from inference.io import read_image
from inference.postprocess import load_min_area, postprocess
from inference.predictor import SCALE_MODES, load_predictor, resolve_checkpoints, resolve_device
from inference.rle import encode
from inference.sliding import BLENDS, TTA_SIZES
from inference.tables import TableError, load_test, load_train

log = logging.getLogger("inference.predict")


@dataclass
class Options:
    """Everything that decides a prediction besides the models."""

    ensemble: str = "mean"
    tta: int = 0
    scale_mode: str = "reduce"
    organ_thresholds: dict[str, float] = field(default_factory=dict)
    threshold: float | None = None
    use_organ: bool = False
    fill_holes: bool = False
    min_area_um2: dict[str, float] = field(default_factory=dict)
    save_probs: Path | None = None
    save_probs_max_side: int = 1024


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


def _images(table: pd.DataFrame, image_dir: Path) -> Iterator[tuple[object, np.ndarray | Exception]]:
    """Yield (row, image or the read error), reading the next image in a thread while one is predicted."""
    def read(row: object) -> np.ndarray | Exception:
        try:
            return read_image(image_dir / f"{row.id}.tiff")
        except Exception as exc:  # reported per image by the caller, never fatal
            return exc

    rows = list(table.itertuples(index=False))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, rows[0]) if rows else None
        for i, row in enumerate(rows):
            image = pending.result()
            pending = pool.submit(read, rows[i + 1]) if i + 1 < len(rows) else None
            yield row, image


def predict_one(
    image: np.ndarray, organ: str, pixel_size: float, members: list[Member], options: Options
) -> tuple[str, Decision]:
    """RLE of one image's post-processed mask, and the ensemble decision it came from."""
    decision = predict_image(
        image, members, organ=organ, pixel_size=pixel_size, scale_mode=options.scale_mode, tta=options.tta,
        mode=options.ensemble, organ_thresholds=options.organ_thresholds, threshold=options.threshold,
        use_organ=options.use_organ,
    )
    mask = postprocess(decision.mask, organ, pixel_size, options.fill_holes, options.min_area_um2)
    return encode(mask), decision


def predict_table(
    table: pd.DataFrame, image_dir: Path, members: list[Member], options: Options
) -> tuple[pd.DataFrame, list[int]]:
    """RLE of the predicted mask of every row of a test/train table, and the ids that failed."""
    if options.save_probs is not None:
        options.save_probs.mkdir(parents=True, exist_ok=True)
    rles, bad = [], []
    with logging_redirect_tqdm():
        for row, image in tqdm(_images(table, image_dir), total=len(table), desc="predict", unit="img"):
            rle = ""
            try:
                if isinstance(image, Exception):
                    raise image
                if image.shape[:2] != (row.img_height, row.img_width):
                    raise ValueError(
                        f"image is {image.shape[0]}x{image.shape[1]} but the CSV says {row.img_height}x{row.img_width}"
                    )
                rle, decision = predict_one(image, row.organ, row.pixel_size, members, options)
                if options.save_probs is not None:
                    save_probability(options.save_probs / f"{row.id}.npy", decision.probability,
                                     options.save_probs_max_side)
            except Exception as exc:  # the submission loop must finish: empty mask, warning, counted
                log.warning("id %s: empty prediction (%s: %s)", row.id, type(exc).__name__, exc)
                bad.append(int(row.id))
                rle = ""
            rles.append(rle)
    return pd.DataFrame({"id": table["id"].astype("int64").to_numpy(), "rle": rles}), bad


def write_submission(df: pd.DataFrame, path: Path) -> None:
    """Write id,rle atomically (a half-written submission never replaces a good one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m inference.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", type=Path, required=True, help="folder with test.csv + test_images/ (or train)")
    ap.add_argument("--models", type=Path, nargs="+", required=True, help="checkpoint or run folder(s)")
    ap.add_argument("--out", type=Path, default=Path("submission.csv"), help="submission CSV to write")
    ap.add_argument("--split", choices=("test", "train"), default="test", help="predict test.csv or train.csv")
    ap.add_argument("--ensemble", choices=ENSEMBLE_MODES, default="mean")
    ap.add_argument("--weights", type=float, nargs="+", help="one weight per --models entry (default equal)")
    ap.add_argument("--thresholds", type=Path, help='per-organ thresholds JSON {"kidney": 0.3, ...}')
    ap.add_argument("--threshold", type=float, help="cut-off for organs not in --thresholds (default: config.json)")
    ap.add_argument("--tta", type=int, choices=TTA_SIZES, default=0, help="flip views: 0 none, 2, 4, 8 dihedral")
    ap.add_argument("--scale-mode", choices=SCALE_MODES, default="reduce",
                    help="reduce: config reduce or ceil(max(h,w)/(tile*reduce_k)); pixel-size: to the "
                         "checkpoint's um/px; none: as is")
    ap.add_argument("--use-organ", action="store_true", help="multiclass: use test.csv organ, not the majority class")
    ap.add_argument("--fill-holes", action="store_true", help="fill holes in predicted masks")
    ap.add_argument("--min-area", help="drop components under this area in um^2 (number or organ JSON)")
    ap.add_argument("--blend", choices=BLENDS, default="gaussian", help="sliding-window blending weights")
    ap.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda[:n]")
    ap.add_argument("--save-probs", type=Path, help="write DIR/<id>.npy float16 FTU probabilities")
    ap.add_argument("--save-probs-max-side", type=int, default=1024, help="longer side of saved probability maps")
    ap.add_argument("--limit", type=int, help="predict only the first N rows (smoke runs)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        loader = load_test if args.split == "test" else load_train
        table = loader(args.data_dir / f"{args.split}.csv")
        options = Options(
            ensemble=args.ensemble, tta=args.tta, scale_mode=args.scale_mode,
            organ_thresholds=load_thresholds(args.thresholds) if args.thresholds else {},
            threshold=args.threshold, use_organ=args.use_organ, fill_holes=args.fill_holes,
            min_area_um2=load_min_area(args.min_area), save_probs=args.save_probs,
            save_probs_max_side=args.save_probs_max_side,
        )
        members = load_members(args.models, args.weights, args.device, args.batch_size, args.blend)
    except (TableError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.limit is not None:
        table = table.head(args.limit)
    start = time.perf_counter()
    submission, bad = predict_table(table, args.data_dir / f"{args.split}_images", members, options)
    write_submission(submission, args.out)
    seconds = time.perf_counter() - start
    filled = int((submission["rle"] != "").sum())
    print(
        f"wrote {args.out}: {len(submission)} rows, {filled} non-empty, {len(bad)} bad image(s)"
        f"{' ' + str(bad[:10]) if bad else ''}; {len(members)} model(s) on {members[0].predictor.device}, "
        f"{seconds / max(len(submission), 1):.2f} s/image"
    )
    return 1 if bad and len(bad) == len(submission) else 0


if __name__ == "__main__":
    sys.exit(main())
