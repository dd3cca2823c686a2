"""CPU-time cost of the inference-side options against the plain path, on one image of a competition-layout folder.

    python -m benchmarks.tta --data-dir DEMO/data --models RUN [RUN ...] [--image ID] [--stain-reference REF.json]
        [--tta 0] [--adapt-bn-windows 64] [--repeat 1]

Each row is inference.predict.predict_one on the same image with one option added (--tta-scales 0.8,1,1.2,
--stain-tta macenko / reinhard / both, all of them), as process CPU time relative to the plain call: the ratio is
what the time budget multiplies per image. --adapt-bn is a one-off cost per data source before the loop; its row
gives the adaptation of every member on that source's test images (--adapt-bn-windows windows) in plain-image
equivalents. Run with one thread (OMP_NUM_THREADS=1) so the ratios do not depend on other load. Without
--stain-reference, one is fitted on up to 4 train images of --data-dir.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from inference.engine.adapt_bn import adapt_batchnorm
from inference.io import read_image
from inference.predict import Options, load_members, predict_one
from inference.stain import fit_reference
from inference.tables import load_test_lenient


def cpu_seconds(call, repeat: int) -> float:  # noqa: ANN001 - any zero-argument callable
    """Smallest process CPU time of `repeat` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        call()
        best = min(best, time.process_time() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tta", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--models", type=Path, nargs="+", required=True)
    ap.add_argument("--image", help="test id (default: the test image with the most pixels)")
    ap.add_argument("--stain-reference", type=Path)
    ap.add_argument("--tta", type=int, default=0, help="flip views in every row")
    ap.add_argument("--adapt-bn-windows", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    table, _ = load_test_lenient(args.data_dir / "test.csv")
    if args.image is None:
        row = table.loc[(table["img_height"] * table["img_width"]).idxmax()]
    else:
        matches = table[table["id"] == str(args.image)]
        if matches.empty:
            ap.error(f"--image {args.image} is not in {args.data_dir / 'test.csv'}")
        row = matches.iloc[0]
    image = read_image(args.data_dir / "test_images" / f"{row.id}.tiff")
    reference = args.stain_reference
    if reference is None:
        train = sorted((args.data_dir / "train_images").glob("*.tiff"))[:4]
        if not train:
            ap.error("no --stain-reference and no train_images to fit one on")
        reference = fit_reference([read_image(p) for p in train]).save(
            Path(tempfile.mkdtemp(prefix="bench_tta_")) / "stain_reference.json")
    members = load_members(args.models, None, "cpu", 4, "gaussian")
    ref = str(reference)
    variants = {
        "plain": Options(tta=args.tta),
        "--tta-scales 0.8,1,1.2": Options(tta=args.tta, tta_scales=(0.8, 1.0, 1.2)),
        "--stain-tta macenko": Options(tta=args.tta, stain_reference=ref, stain_tta=("macenko",)),
        "--stain-tta reinhard": Options(tta=args.tta, stain_reference=ref, stain_tta=("reinhard",)),
        "--stain-tta (both)": Options(tta=args.tta, stain_reference=ref, stain_tta=("macenko", "reinhard")),
        "scales + stain (both)": Options(tta=args.tta, tta_scales=(0.8, 1.0, 1.2), stain_reference=ref,
                                         stain_tta=("macenko", "reinhard")),
    }
    predict_one(image, row.organ, row.pixel_size, members, variants["plain"], data_source=row.data_source)  # warm-up
    seconds = {}
    for name, options in variants.items():
        seconds[name] = cpu_seconds(lambda o=options: predict_one(image, row.organ, row.pixel_size, members, o,
                                                                  data_source=row.data_source), args.repeat)
    source = table[table["data_source"] == row.data_source]
    seconds[f"--adapt-bn ({args.adapt_bn_windows} windows, once per source)"] = cpu_seconds(
        lambda: adapt_batchnorm(source, args.data_dir / "test_images", members, windows=args.adapt_bn_windows)
        .restore(), args.repeat)
    plain = seconds["plain"]
    print(f"image {row.id} ({row.organ}, {row.data_source}, {image.shape[1]}x{image.shape[0]} px), "
          f"{len(members)} member(s), --tta {args.tta}, CPU seconds with one thread")
    print(pd.DataFrame({"cpu_s": seconds, "x plain": {k: v / plain for k, v in seconds.items()}}).round(3)
          .to_string())


if __name__ == "__main__":
    main()
