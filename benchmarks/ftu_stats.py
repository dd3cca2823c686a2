"""FTU statistics per organ from a train.csv: why some organs starve under image-uniform tile sampling.

    python benchmarks/ftu_stats.py --train-csv DATA/train.csv [--tile 256] [--pixel-size 0.8]
    python benchmarks/ftu_stats.py --train-csv ../shared/fixtures/hubmap2022/train_rows_sample.csv

Per organ (medians over images): the FTU share of the image, FTUs per image, FTU diameter in um (from the area
of each connected component), that diameter in pixels of a whole-image tile (an image of side img_width shrunk to
--tile px, the seed team's split 1) and at --pixel-size um/px (the crop sampler), and each organ's share of all FTU
pixels when every organ gets as many images: the share of a pixel-summed loss that organ's FTUs receive from an
image-uniform sampler.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.rle import decode  # noqa: E402
from inference.tables import load_train  # noqa: E402


def ftu_stats(train: pd.DataFrame, tile: int, pixel_size: float) -> pd.DataFrame:
    """One row per organ: the medians described in the module docstring."""
    rows = []
    for r in train.itertuples(index=False):
        mask = decode(r.rle, r.img_height, r.img_width)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        areas_um2 = stats[1:, cv2.CC_STAT_AREA] * float(r.pixel_size) ** 2
        diameter = float(np.median(2 * np.sqrt(areas_um2 / np.pi))) if count > 1 else np.nan
        rows.append({"organ": r.organ, "fraction": float(mask.mean()), "ftus": count - 1, "diameter_um": diameter,
                     "whole_tile_px": diameter / float(r.pixel_size) * tile / max(r.img_height, r.img_width)})
    df = pd.DataFrame(rows)
    table = df.groupby("organ").agg(
        images=("ftus", "size"), ftu_fraction=("fraction", "median"), ftus_per_image=("ftus", "median"),
        ftu_diameter_um=("diameter_um", "median"), diameter_px_whole_tile=("whole_tile_px", "median"),
    )
    table[f"diameter_px_at_{pixel_size:g}um"] = table["ftu_diameter_um"] / pixel_size
    table["share_of_ftu_pixels"] = table["ftu_fraction"] / table["ftu_fraction"].sum()
    return table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-csv", type=Path, required=True)
    ap.add_argument("--tile", type=int, default=256, help="whole-image tile side (the seed team's split 1)")
    ap.add_argument("--pixel-size", type=float, default=0.8, help="um/px of the crop sampler")
    args = ap.parse_args(argv)
    table = ftu_stats(load_train(args.train_csv), args.tile, args.pixel_size)
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
