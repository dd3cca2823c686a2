"""Draw predicted (and true) FTU outlines on the images, one PNG per id, for checking by eye.

    python -m inference.overlay --data-dir DIR --submission submission.csv --out overlays/
        [--solution test_solution.csv] [--split test|train] [--png-max-side 1024] [--ids 1 2 ...]

Predicted outlines are cyan, true outlines yellow; a caption gives id, organ, data source and, with
--solution, the image's Dice. Images are shrunk so the longer side is at most --png-max-side (inference.predict's
--max-side is another idea: its working-scale cap).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from inference.cli import HelpFormatter, hidden_alias
from inference.io import ImageReadError, read_image
from inference.metric import dice
from inference.rle import decode
from inference.tables import TableError, load_solution, load_submission, load_test, load_train

PREDICTED = (0, 255, 255)  # RGB cyan
TRUE = (255, 220, 0)  # RGB yellow
CAPTION = 28  # px of caption bar


def outline(canvas: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], thickness: int = 2) -> None:
    """Draw the outer and hole contours of a mask (already at canvas size) onto an RGB canvas in place."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, colour, thickness, lineType=cv2.LINE_AA)


def render(
    image: np.ndarray, predicted: np.ndarray, true: np.ndarray | None, caption: str, max_side: int = 1024,
    min_side: int = 512,
) -> np.ndarray:
    """An RGB picture: the image shrunk to max_side (or enlarged to min_side), outlines on top, a caption bar above.

    Small images (a HuBMAP prostate at 6.263 um/px is about 30 px) are enlarged by a whole factor with nearest
    neighbours, so each pixel shows as a square and outlines of 2 px do not cover the image.
    """
    h, w = image.shape[:2]
    if max(h, w) > max_side:
        factor = max_side / max(h, w)
    elif max(h, w) < min_side:  # a whole factor that reaches min_side without passing max_side
        factor = float(max(1, min(math.ceil(min_side / max(h, w)), max_side // max(h, w))))
    else:
        factor = 1.0
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    if factor == 1.0:
        canvas = image.copy()
    else:
        canvas = cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_NEAREST).copy()
    if true is not None:
        outline(canvas, cv2.resize(true, size, interpolation=cv2.INTER_NEAREST), TRUE)
    outline(canvas, cv2.resize(predicted, size, interpolation=cv2.INTER_NEAREST), PREDICTED)
    bar = np.full((CAPTION, canvas.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(bar, caption, (6, CAPTION - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, canvas], axis=0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m inference.overlay", description=__doc__, formatter_class=HelpFormatter
    )
    ap.add_argument("--data-dir", type=Path, required=True, help="folder with <split>.csv and <split>_images/")
    ap.add_argument("--submission", type=Path, required=True, help="CSV with id,rle")
    ap.add_argument("--out", type=Path, required=True, help="folder for <id>.png")
    ap.add_argument("--solution", type=Path, help="CSV with true masks (id,organ,img_height,img_width,rle)")
    ap.add_argument("--split", choices=("test", "train"), default="test")
    ap.add_argument("--png-max-side", type=int, default=1024, help="longer side of the PNGs")
    ap.add_argument("--png-min-side", type=int, default=512,
                    help="smaller images are enlarged (whole factor, nearest) to at least this longer side")
    hidden_alias(ap, "--max-side", "--png-max-side")  # the old spellings, for one release
    hidden_alias(ap, "--min-side", "--png-min-side")
    ap.add_argument("--ids", type=int, nargs="+", help="only these ids")
    args = ap.parse_args(argv)
    try:
        table = (load_test if args.split == "test" else load_train)(args.data_dir / f"{args.split}.csv")
        sub = load_submission(args.submission)
        predicted = dict(zip(sub["id"].tolist(), sub["rle"], strict=True))
        truth = None
        if args.solution:
            sol = load_solution(args.solution)
            truth = dict(zip(sol["id"].tolist(), sol["rle"], strict=True))
    except TableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.ids:
        table = table[table["id"].isin(args.ids)]
    args.out.mkdir(parents=True, exist_ok=True)
    written = 0
    for r in tqdm(table.itertuples(index=False), total=len(table), desc="overlay", unit="img"):
        if r.id not in predicted:
            print(f"warning: id {r.id} is not in {args.submission}; skipped", file=sys.stderr)
            continue
        try:
            image = read_image(args.data_dir / f"{args.split}_images" / f"{r.id}.tiff")
        except ImageReadError as exc:
            print(f"warning: id {r.id}: {exc}; skipped", file=sys.stderr)
            continue
        h, w = image.shape[:2]
        pred = decode(predicted[r.id], h, w)
        true = decode(truth[r.id], h, w) if truth is not None and r.id in truth else None
        caption = f"id {r.id}  {r.organ}  {r.data_source}  {w}x{h}"
        if true is not None:
            caption += f"  dice {dice(pred, true):.3f}  (cyan predicted, yellow true)"
        rgb = render(image, pred, true, caption, args.png_max_side, args.png_min_side)
        cv2.imwrite(str(args.out / f"{r.id}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        written += 1
    print(f"wrote {written} overlay(s) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
