"""Laplacian pyramid blending (LPB) of tile pairs: the seed team's +0.02 augmentation, added to a tile set.

    python -m data_prep.lpb --tiles TILES --n-per-organ 200 [--levels 5] [--seed 0] [--overwrite]

For each organ, K random pairs of original tiles from the same organ, the same fold (pairs across folds would
leak validation images into training) and the same scale (split/reduce) are blended under a straight split
(left/right, top/bottom or a random line): low frequencies blend smoothly across the split while fine detail
switches sharply, and the masks are composited along the same split. The new tiles go to
TILES/images|masks/lpb_<organ>_<k>.png and into TILES/index.csv with source=lpb. The pairs and splits are
drawn from the seed up front, so a re-run skips tiles already written; TILES/lpb.json records the settings
and the original tiles drawn from, and --overwrite replaces LPB tiles made with other settings or tiles.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from data_prep.tileset import TileSetError, load_index, read_png, read_tile, write_index, write_png
from inference.cli import HelpFormatter
from inference.organs import ORGANS, class_index

SPLIT_MODES = ("left-right", "top-bottom", "line")


@dataclass(frozen=True)
class SplitSpec:
    """A straight split: mode, and two uniform [0, 1) draws that place (and for a line, tilt) it."""

    mode: str
    u: float
    v: float


def split_mask(height: int, width: int, spec: SplitSpec) -> np.ndarray:
    """Boolean (height, width) map, True where the first image is kept; the split crosses the middle half."""
    if spec.mode not in SPLIT_MODES:
        raise ValueError(f"unknown split mode {spec.mode!r}; expected one of {SPLIT_MODES}")
    ys, xs = np.ogrid[:height, :width]
    if spec.mode == "left-right":
        return np.broadcast_to(xs < (0.25 + 0.5 * spec.u) * width, (height, width)).copy()
    if spec.mode == "top-bottom":
        return np.broadcast_to(ys < (0.25 + 0.5 * spec.u) * height, (height, width)).copy()
    angle = np.pi * spec.v
    offset = (spec.u - 0.5) * 0.5 * min(height, width)
    return (xs - width / 2) * np.cos(angle) + (ys - height / 2) * np.sin(angle) < offset


def random_split(rng: np.random.Generator) -> SplitSpec:
    """Draw a split mode and its placement."""
    return SplitSpec(SPLIT_MODES[int(rng.integers(len(SPLIT_MODES)))], float(rng.random()), float(rng.random()))


def max_levels(height: int, width: int) -> int:
    """Most pyramid levels an image supports (the coarsest level keeps at least 2 px a side)."""
    return max(0, int(np.log2(min(height, width))) - 1)


def blend(first: np.ndarray, second: np.ndarray, keep_first: np.ndarray, levels: int = 5) -> np.ndarray:
    """Laplacian pyramid blend of two uint8 images under a boolean mask (True = first image).

    Pyramid blending is linear, so blend = second + collapse(G_i(mask) * L_i(first - second)): one Laplacian
    pyramid of the difference instead of two, with all channels per OpenCV call.
    """
    if first.shape != second.shape or first.shape[:2] != keep_first.shape:
        raise ValueError(f"blend: shapes differ: {first.shape}, {second.shape}, mask {keep_first.shape}")
    h, w = keep_first.shape
    if not 0 <= levels <= max_levels(h, w):
        raise ValueError(f"{levels} pyramid levels is too many for {h}x{w} tiles; use at most {max_levels(h, w)}")
    diff = first.astype(np.float32) - second.astype(np.float32)
    weight = keep_first.astype(np.float32)
    laplacians, weights = [], []
    for _ in range(levels):
        down, weight_down = cv2.pyrDown(diff), cv2.pyrDown(weight)
        laplacians.append(diff - cv2.pyrUp(down, dstsize=(diff.shape[1], diff.shape[0])))
        weights.append(weight)
        diff, weight = down, weight_down
    out = diff * (weight[..., None] if diff.ndim == 3 else weight)
    for lap, wt in zip(reversed(laplacians), reversed(weights), strict=True):
        out = cv2.pyrUp(out, dstsize=(lap.shape[1], lap.shape[0]))
        out += lap * (wt[..., None] if lap.ndim == 3 else wt)
    out += second
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def composite_mask(first: np.ndarray, second: np.ndarray, keep_first: np.ndarray) -> np.ndarray:
    """Hard composite of two class masks along the split."""
    return np.where(keep_first, first, second).astype(np.uint8)


@dataclass(frozen=True)
class Pair:
    tile_id: str
    first: pd.Series  # index rows of the two tiles
    second: pd.Series
    spec: SplitSpec


def plan_pairs(index: pd.DataFrame, n_per_organ: int, seed: int) -> list[Pair]:
    """Draw K pairs per organ (same organ, fold, split and reduce) and their splits, deterministically."""
    originals = index[index["source"] == "original"]
    pairs = []
    for organ in ORGANS:
        tiles = originals[originals["organ"] == organ]
        groups = [g for _, g in tiles.groupby(["fold", "split", "reduce"]) if len(g) >= 2]
        if not groups:
            if len(tiles):
                print(f"lpb: {organ}: no fold/scale group has two tiles, skipped")
            continue
        rng = np.random.default_rng([seed, class_index(organ)])  # per organ: organs do not shift each other
        sizes = np.array([len(g) for g in groups], dtype=np.float64)
        for k in range(n_per_organ):
            group = groups[int(rng.choice(len(groups), p=sizes / sizes.sum()))]
            i, j = rng.choice(len(group), size=2, replace=False)
            pairs.append(Pair(f"lpb_{organ}_{k:05d}", group.iloc[int(i)], group.iloc[int(j)], random_split(rng)))
    return pairs


def _lpb_row(tile_id: str, a: pd.Series, b: pd.Series, mask: np.ndarray, share_a: float) -> dict:
    row = a.to_dict()
    row.update(
        tile_id=tile_id,
        fg_fraction=round(float((mask > 0).mean()), 6),
        image_path=f"images/{tile_id}.png",
        mask_path=f"masks/{tile_id}.png",
        source="lpb",
        tile_pixel_size=round((a["tile_pixel_size"] + b["tile_pixel_size"]) / 2, 6),
        tissue_fraction=round(share_a * a["tissue_fraction"] + (1 - share_a) * b["tissue_fraction"], 6),
        parents=f"{a['tile_id']}|{b['tile_id']}",
    )
    return row


@dataclass(frozen=True)
class LpbSettings:
    n_per_organ: int
    levels: int
    seed: int
    originals: str  # fingerprint of the original tiles the pairs were drawn from


def fingerprint(tile_ids: pd.Series) -> str:
    """Short hash of a set of tile ids: LPB tiles drawn from another tile set are stale."""
    return hashlib.sha1("\n".join(sorted(tile_ids)).encode()).hexdigest()[:16]


def add_lpb(tiles_dir: Path, n_per_organ: int, levels: int = 5, seed: int = 0, overwrite: bool = False) -> pd.DataFrame:
    """Blend K tile pairs per organ into the tile set (skipping tiles already written); return the new index."""
    tiles_dir = Path(tiles_dir)
    index = load_index(tiles_dir)
    if n_per_organ < 0:
        raise TileSetError(f"n_per_organ must be >= 0, got {n_per_organ}")
    if len(index):
        h, w = read_png(tiles_dir / index["mask_path"].iloc[0], mask=True).shape
        if not 0 <= levels <= max_levels(h, w):
            raise TileSetError(f"--levels {levels} is too many for {h}x{w} tiles; use 0 to {max_levels(h, w)}")
    originals = index[index["source"] != "lpb"]
    settings = asdict(LpbSettings(n_per_organ, levels, seed, fingerprint(originals["tile_id"])))
    record = tiles_dir / "lpb.json"
    previous = json.loads(record.read_text()) if record.is_file() else None
    if previous is not None and previous != settings and not overwrite:
        raise TileSetError(
            f"{tiles_dir} holds LPB tiles made with {previous}, not {settings}; pass --overwrite to replace them"
        )
    if overwrite or previous != settings:
        old = index[index["source"] == "lpb"]
        for path in [*old["image_path"], *old["mask_path"]]:
            (tiles_dir / path).unlink(missing_ok=True)
    plan = plan_pairs(originals, n_per_organ, seed)
    record.write_text(json.dumps(settings, indent=2) + "\n")
    rows, done = [], 0
    for pair in tqdm(plan, desc="lpb", unit="tile"):
        image_path = tiles_dir / "images" / f"{pair.tile_id}.png"
        mask_path = tiles_dir / "masks" / f"{pair.tile_id}.png"
        if image_path.is_file() and mask_path.is_file():
            done += 1
            mask = read_png(mask_path, mask=True)
            keep_first = split_mask(*mask.shape, pair.spec)
        else:
            image_a, mask_a = read_tile(tiles_dir, pair.first)
            image_b, mask_b = read_tile(tiles_dir, pair.second)
            keep_first = split_mask(*mask_a.shape, pair.spec)
            mask = composite_mask(mask_a, mask_b, keep_first)
            write_png(image_path, blend(image_a, image_b, keep_first, levels))
            write_png(mask_path, mask)
        rows.append(_lpb_row(pair.tile_id, pair.first, pair.second, mask, float(keep_first.mean())))
    print(f"lpb: {len(plan)} tiles planned, {done} already on disk")
    new_index = pd.concat([originals, pd.DataFrame(rows, columns=originals.columns)], ignore_index=True)
    write_index(tiles_dir, new_index)
    return load_index(tiles_dir)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m data_prep.lpb", description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--tiles", type=Path, required=True, help="tile set folder (index.csv from data_prep.tiles)")
    ap.add_argument("--n-per-organ", type=int, required=True, help="blended tiles per organ")
    ap.add_argument("--levels", type=int, default=5, help="Laplacian pyramid levels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true", help="replace LPB tiles made with other settings")
    args = ap.parse_args(argv)
    try:
        index = add_lpb(args.tiles, args.n_per_organ, args.levels, args.seed, args.overwrite)
    except TileSetError as exc:
        raise SystemExit(f"error: {exc}") from exc
    lpb = index[index["source"] == "lpb"]
    print(f"wrote {args.tiles / 'index.csv'}: {len(lpb)} LPB tiles\n{lpb.groupby('organ').size().to_string()}")


if __name__ == "__main__":
    main()
