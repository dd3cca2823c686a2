"""Per-organ thresholds from out-of-fold FTU probabilities, printing mean Dice before and after.

    python -m inference.tune_thresholds --oof PROBS [PROBS ...] --solution train.csv --out organs.json
        [--base 0.5] [--grid-step 0.01] [--min-images 1] [--by-source [--min-source-images 10]]

Input format: every PROBS argument is a folder of <id>.npy files, each a 2-D float (float16 or
float32) FTU probability map of image <id> at any resolution (it is resized bilinearly to
img_height x img_width, as inference.predict does before thresholding). A folder with no .npy files
of its own is searched for fold*/oof/<id>.npy, the layout a trainer writes under outputs/<run>/.
`inference.predict --split train --folds folds.csv --save-probs DIR` writes exactly this format, out of fold
and through the submission pipeline (the recommended source). Leftover `*.tmp.npy` files of an interrupted
run are ignored. --solution is a CSV
with id, organ, img_height, img_width, rle (train.csv or a test_solution.csv); ids without a
probability map are skipped and counted. An id found twice (two folders) is an error.

Each organ gets the threshold on the grid that maximises its mean per-image Dice; organs with fewer
than --min-images images keep --base. The JSON written is what --thresholds of inference.predict reads.
--by-source (2nd place: thresholds per organ and data source) also tunes each data source x organ on its own
images and writes {"HPA": {organ: t}, "Hubmap": {organ: t}} (every source of inference.organs, so a source
absent from the OOF maps, e.g. Hubmap for the HPA-only train.csv, gets the organ thresholds); a source x organ
with fewer than --min-source-images images keeps the organ threshold. It needs a data_source column in --solution.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from inference.cli import HelpFormatter
from inference.metric import dice
from inference.organs import DATA_SOURCES, ORGANS
from inference.rle import decode
from inference.tables import TableError, load_solution
from inference.tiling import resize_probs

BINS = 1000  # histogram resolution of the threshold search


def _maps(root: Path, pattern: str) -> list[Path]:
    """Probability maps under root, without the *.tmp.npy an interrupted save leaves behind."""
    return sorted(f for f in root.glob(pattern) if not f.name.endswith(".tmp.npy"))


def find_oof(paths: list[Path]) -> dict[int, Path]:
    """Map image id -> .npy path over folders of <id>.npy (or their fold*/oof/ subfolders)."""
    found: dict[int, Path] = {}
    for root in paths:
        files = _maps(root, "*.npy") or _maps(root, "fold*/oof/*.npy")
        if not files:
            raise FileNotFoundError(f"{root}: no <id>.npy files here or in fold*/oof/")
        for f in files:
            if not f.stem.isdigit():
                raise ValueError(f"{f}: OOF files must be named <image id>.npy")
            if int(f.stem) in found:
                raise ValueError(f"image {f.stem} has two probability maps: {found[int(f.stem)]} and {f}")
            found[int(f.stem)] = f
    return found


def load_probability(path: Path, height: int, width: int) -> np.ndarray:
    """Read one map and resize it to (height, width) float32, as inference.predict does."""
    prob = np.load(path)
    if prob.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D probability map, got shape {prob.shape}")
    return resize_probs(prob[None], height, width)[0]


def dice_curve(prob: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice of (prob > k / BINS) against truth for k = 0..BINS-1, from two histograms."""
    bins = np.clip((prob * BINS).astype(np.int64), 0, BINS - 1)
    # prob > k / BINS  <=>  bin >= k (up to values exactly on a bin edge)
    all_hist = np.bincount(bins.ravel(), minlength=BINS)
    fg_hist = np.bincount(bins[truth], minlength=BINS)
    pred = np.cumsum(all_hist[::-1])[::-1]
    tp = np.cumsum(fg_hist[::-1])[::-1]
    denom = pred + int(truth.sum())
    return np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 1.0)


DEFAULT_MIN_SOURCE_IMAGES = 10  # fewer images than this per source x organ: a tuned cut-off mostly fits noise


def tune(
    oof: dict[int, Path],
    solution: pd.DataFrame,
    base: float = 0.5,
    grid_step: float = 0.01,
    min_images: int = 1,
    by_source: bool = False,
    min_source_images: int = DEFAULT_MIN_SOURCE_IMAGES,
) -> tuple[dict, pd.DataFrame]:
    """Best threshold per organ (by_source: per data source and organ) and a per-image table of Dice.

    The table has Dice at base, at the organ threshold and (by_source) at the image's source threshold.
    """
    rows = solution[solution["id"].isin(oof)].reset_index(drop=True)
    if rows.empty:
        raise ValueError("no solution id has a probability map; check --oof and --solution")
    if by_source and "data_source" not in rows.columns:
        raise ValueError("--by-source needs a data_source column in --solution (train.csv has one)")
    grid = np.arange(round(grid_step * BINS), BINS, round(grid_step * BINS))
    curves = []
    for r in tqdm(rows.itertuples(index=False), total=len(rows), desc="dice curves", unit="img"):
        prob = load_probability(oof[int(r.id)], int(r.img_height), int(r.img_width))
        curves.append(dice_curve(prob, decode(r.rle, int(r.img_height), int(r.img_width)).astype(bool))[grid])
    curves = np.stack(curves)
    thresholds = {}
    for organ in ORGANS:
        sel = (rows["organ"] == organ).to_numpy()
        if sel.sum() >= min_images and sel.any():
            thresholds[organ] = round(float(grid[np.argmax(curves[sel].mean(0))]) / BINS, 6)
    by_source_thresholds: dict[str, dict[str, float]] = {}
    if by_source:
        for source in DATA_SOURCES:
            table = by_source_thresholds[source] = dict(thresholds)
            for organ in ORGANS:
                sel = ((rows["organ"] == organ) & (rows["data_source"] == source)).to_numpy()
                if sel.sum() >= max(min_source_images, 1):
                    table[organ] = round(float(grid[np.argmax(curves[sel].mean(0))]) / BINS, 6)
    per_image = []
    for r in tqdm(rows.itertuples(index=False), total=len(rows), desc="exact dice", unit="img"):
        h, w = int(r.img_height), int(r.img_width)
        prob, truth = load_probability(oof[int(r.id)], h, w), decode(r.rle, h, w)
        cut = thresholds.get(r.organ, base)
        entry = {"id": int(r.id), "organ": r.organ, "threshold": cut,
                 "dice_base": dice(prob > base, truth), "dice_tuned": dice(prob > cut, truth)}
        if by_source:
            own = by_source_thresholds.get(r.data_source, thresholds).get(r.organ, base)
            entry.update(data_source=r.data_source, source_threshold=own, dice_source=dice(prob > own, truth))
        per_image.append(entry)
    return (by_source_thresholds if by_source else thresholds), pd.DataFrame(per_image)


def report(per_image: pd.DataFrame, base: float) -> str:
    """Table of Dice at the base threshold and at the tuned thresholds, per organ and overall."""
    lines = [f"{'organ':<15s} {'n':>4s} {'dice@' + format(base, 'g'):>10s} {'threshold':>9s} {'dice':>7s}"]
    for organ, g in per_image.groupby("organ"):
        lines.append(f"{organ:<15s} {len(g):4d} {g['dice_base'].mean():10.4f} {g['threshold'].iloc[0]:9.3f} "
                     f"{g['dice_tuned'].mean():7.4f}")
    lines.append(f"{'all':<15s} {len(per_image):4d} {per_image['dice_base'].mean():10.4f} {'':9s} "
                 f"{per_image['dice_tuned'].mean():7.4f}")
    return "\n".join(lines)


def report_by_source(per_image: pd.DataFrame, base: float) -> str:
    """Dice per organ x data source at base, at the organ threshold and at the source threshold."""
    lines = [f"{'organ':<15s} {'source':<7s} {'n':>4s} {'dice@' + format(base, 'g'):>10s} {'organ t':>8s} "
             f"{'dice':>7s} {'source t':>8s} {'dice':>7s}"]
    for (organ, source), g in per_image.groupby(["organ", "data_source"]):
        lines.append(f"{organ:<15s} {source:<7s} {len(g):4d} {g['dice_base'].mean():10.4f} "
                     f"{g['threshold'].iloc[0]:8.3f} {g['dice_tuned'].mean():7.4f} "
                     f"{g['source_threshold'].iloc[0]:8.3f} {g['dice_source'].mean():7.4f}")
    for source, g in per_image.groupby("data_source"):
        lines.append(f"{'all':<15s} {source:<7s} {len(g):4d} {g['dice_base'].mean():10.4f} {'':8s} "
                     f"{g['dice_tuned'].mean():7.4f} {'':8s} {g['dice_source'].mean():7.4f}")
    lines.append(f"{'all':<15s} {'all':<7s} {len(per_image):4d} {per_image['dice_base'].mean():10.4f} {'':8s} "
                 f"{per_image['dice_tuned'].mean():7.4f} {'':8s} {per_image['dice_source'].mean():7.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m inference.tune_thresholds", description=__doc__,
        formatter_class=HelpFormatter,
    )
    ap.add_argument("--oof", type=Path, nargs="+", required=True, help="folder(s) of <id>.npy probability maps")
    ap.add_argument("--solution", type=Path, required=True, help="CSV with id,organ,img_height,img_width,rle")
    ap.add_argument("--out", type=Path, required=True, help="thresholds JSON to write")
    ap.add_argument("--base", type=float, default=0.5, help="threshold to compare against (and for skipped organs)")
    ap.add_argument("--grid-step", type=float, default=0.01, help="threshold grid spacing (multiple of 0.001)")
    ap.add_argument("--min-images", type=int, default=1, help="organs with fewer images keep --base")
    ap.add_argument("--by-source", action="store_true",
                    help='write {"HPA": {organ: t}, "Hubmap": {organ: t}}, tuned per data source and organ')
    ap.add_argument("--min-source-images", type=int, default=DEFAULT_MIN_SOURCE_IMAGES,
                    help="--by-source: a data source x organ with fewer images keeps the organ threshold")
    args = ap.parse_args(argv)
    if args.min_images < 0 or args.min_source_images < 1:
        ap.error("--min-images must be >= 0 and --min-source-images >= 1")
    try:
        oof = find_oof(args.oof)
        solution = load_solution(args.solution)
        thresholds, per_image = tune(oof, solution, args.base, args.grid_step, args.min_images, args.by_source,
                                     args.min_source_images)
    except (TableError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    skipped = len(set(solution["id"]) - set(oof))
    print(report(per_image, args.base))
    if args.by_source:
        print(f"\nper data source (organ threshold where a source x organ has < {args.min_source_images} images):")
        print(report_by_source(per_image, args.base))
    if skipped:
        print(f"{skipped} solution id(s) without a probability map were skipped")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(thresholds, indent=2) + "\n")
    print(f"wrote {args.out}: {thresholds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
