"""Which stain marks the FTUs? Colour-deconvolved stain density inside FTUs against the tissue around them.

    python benchmarks/stain_contrast.py --data-dir DATA [--split train test] [--ring-um 40]

For every image of the chosen splits (train.csv, test_solution.csv), the RGB optical density is unmixed into
hematoxylin, eosin and DAB (Ruifrok & Johnston, data_prep.augment.HED_FROM_RGB) and averaged over the FTU mask and
over a ring of --ring-um micrometres around each FTU (the tissue the model must tell the FTU from). Prints, per
organ and data source, FTU density, ring density and their difference for each stain: a model trained on HPA rows
where an FTU differs from its surroundings mainly by DAB has no such cue on H&E / PAS rows, which carry no DAB.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_prep.augment import HED_FROM_RGB, optical_density  # noqa: E402
from inference.io import read_image  # noqa: E402
from inference.organs import ORGANS  # noqa: E402
from inference.rle import decode  # noqa: E402

STAINS = ("H", "E", "DAB")


def contrast(image: np.ndarray, mask: np.ndarray, ring_px: int) -> dict[str, float]:
    """Mean stain density over the FTUs and over a ring of ring_px pixels around them, per stain."""
    hed = (optical_density(image).reshape(-1, 3) @ HED_FROM_RGB).reshape(*mask.shape, 3)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring_px + 1, 2 * ring_px + 1))
    ring = (cv2.dilate(mask, kernel) > 0) & (mask == 0)
    inside = mask > 0
    out = {}
    for k, stain in enumerate(STAINS):
        out[f"{stain} ftu"] = float(hed[..., k][inside].mean())
        out[f"{stain} ring"] = float(hed[..., k][ring].mean()) if ring.any() else np.nan
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python benchmarks/stain_contrast.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True, help="competition-layout data (test_solution.csv for test)")
    ap.add_argument("--split", nargs="+", choices=("train", "test"), default=["train", "test"])
    ap.add_argument("--ring-um", type=float, default=40.0, help="width of the tissue ring around each FTU")
    args = ap.parse_args(argv)
    tables = {"train": "train.csv", "test": "test_solution.csv"}
    rows = []
    for split in args.split:
        path = args.data_dir / tables[split]
        if not path.is_file():
            ap.error(f"{path} not found")
        table = pd.read_csv(path)
        if "pixel_size" not in table and (args.data_dir / "test.csv").is_file():
            table = table.merge(pd.read_csv(args.data_dir / "test.csv")[["id", "pixel_size"]], on="id")
        for r in tqdm(list(table.itertuples(index=False)), desc=split, unit="img"):
            mask = decode(r.rle, int(r.img_height), int(r.img_width))
            image = read_image(args.data_dir / f"{split}_images" / f"{r.id}.tiff")
            ring_px = max(1, round(args.ring_um / float(r.pixel_size)))
            rows.append({"organ": r.organ, "data_source": r.data_source, **contrast(image, mask, ring_px)})
    df = pd.DataFrame(rows).groupby(["organ", "data_source"]).mean()
    for stain in STAINS:
        df[f"{stain} diff"] = df[f"{stain} ftu"] - df[f"{stain} ring"]
    df = df.reindex([(o, s) for o in ORGANS for s in ("HPA", "Hubmap") if (o, s) in df.index])
    heads = [f"{s} {k}" for s in STAINS for k in ("ftu", "ring", "diff")]
    print(f"stain optical density (colour deconvolution), FTU vs a {args.ring_um:g} um ring, mean over images")
    print("| organ | source | " + " | ".join(heads) + " |\n" + "|---" * (len(heads) + 2) + "|")
    for (organ_name, source), r in df.iterrows():
        print(f"| {organ_name} | {source} | " + " | ".join(f"{r[h]:+.3f}" for h in heads) + " |")


if __name__ == "__main__":
    main()
