"""The `python -m inference.wsi` command line: one slide (inference.wsi.predict) or a cohort (inference.wsi.cohort).

See inference.wsi.predict for what a slide run does and writes, and docs/wsi.md for the reference.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from inference.cli import HelpFormatter
from inference.engine.ensemble import add_ensemble_arguments
from inference.engine.postprocess import load_min_area
from inference.io import ImageReadError
from inference.organs import ORGANS
from inference.predict import load_members
from inference.wsi import predict as wsi_predict
from inference.wsi.cohort import run_cohort_cli
from inference.wsi.polygons import OBJECT_TYPES
from inference.wsi.predict import CHUNK, MASK_FORMATS, WsiOptions, predict_slide, run_digest
from inference.wsi.reader import READERS


def add_prediction_args(ap: argparse.ArgumentParser) -> None:
    """The flags a single slide and a cohort share: the ensemble's (inference.engine.ensemble) and the slide's."""
    add_ensemble_arguments(ap, scale=False)
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--reader", choices=READERS, default="auto",
                    help="auto: OpenSlide for vendor formats and vendor TIFFs, tifffile for OME / generic TIFF")
    ap.add_argument("--fill-holes", action="store_true", help="fill holes in every FTU")
    ap.add_argument("--min-area", help="drop FTUs under this area in um^2 (a number, or an organ JSON)")
    ap.add_argument("--objects", choices=OBJECT_TYPES, default="annotation",
                    help="QuPath objectType of the GeoJSON features (detection: lighter for many objects)")
    ap.add_argument("--mask-format", choices=MASK_FORMATS, default="tiff",
                    help="tiff: S_mask.tif in OpenSlide's layout; ome: S_mask.ome.tif with SubIFDs (Bio-Formats)")
    ap.add_argument("--block", type=int, default=2048,
                    help=f"block side in work-grid pixels (the level read, or a slide without a pyramid shrunk to "
                    f"about the models' um/px; multiple of {CHUNK})")
    ap.add_argument("--overwrite", action="store_true", help="discard finished or partial work")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m inference.wsi", description=wsi_predict.__doc__, formatter_class=HelpFormatter
    )
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--slide", type=Path, help="one whole-slide image (OME-TIFF, tiled TIFF, .svs, ...)")
    which.add_argument("--slides", type=Path, help="cohort CSV: slide (path, relative to the CSV), organ, optional mpp")
    add_prediction_args(ap)
    ap.add_argument("--mpp", type=float, help="--slide: um per level-0 pixel (unset: from the file's metadata)")
    ap.add_argument("--organ", choices=ORGANS, help="--slide: its organ (thresholds, FTU class, --organ-from csv)")
    ap.add_argument("--engine", choices=("local", "ray"), default="local",
                    help="--slides: one slide after another here, or one Ray task per slide")
    ap.add_argument("--ray-address", help="--engine ray: cluster address (unset: start a local one)")
    ap.add_argument("--max-retries", type=int, default=3, help="--engine ray: re-runs of a slide whose worker died")
    return ap


def options_from_args(args: argparse.Namespace, organ: str = "") -> WsiOptions:
    """WsiOptions of a parsed command line, for one slide of `organ`."""
    return WsiOptions.from_args(args, organ=organ, min_area_um2=load_min_area(args.min_area))


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.block % CHUNK or args.block <= 0:
        ap.error(f"--block must be a positive multiple of {CHUNK}, got {args.block}")
    if args.slides is not None:
        if args.mpp is not None or args.organ:
            ap.error("--mpp and --organ are per slide with --slides: put them in the CSV's mpp and organ columns")
        return run_cohort_cli(args, ap)
    try:
        options = options_from_args(args, args.organ or "")
        members = load_members(args.models, args.weights, args.device, args.batch_size, args.blend)
        run = run_digest(args.slide, args.models, args.weights, args.blend, options, args.reader, args.mpp)
        summary = predict_slide(args.slide, members, args.out, options, args.reader, args.mpp, args.overwrite, run)
    except (ImageReadError, FileNotFoundError, ValueError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{summary['slide']}: level {summary['level']} at {summary['level_mpp']:.4g} um/px for models at "
        f"{summary['model_mpp']:.4g}; {summary['predicted_windows']} windows predicted, {summary['skipped_windows']} "
        f"background windows skipped ({summary['blocks_without_tissue']} of {summary['blocks']} blocks without "
        f"tissue); {summary['ftus']} FTUs, {summary['ftu_area_um2']:.0f} um^2; {summary['seconds']:.1f} s -> "
        f"{Path(summary['outputs']['mask']).parent}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
