"""A picture of a tile set: one row per organ, FTU mask outlines drawn on the tiles, so a person sees what the
models will see.

    python -m data_prep.preview --tiles TILES --out preview.png [--preset seed10+stain] [--n-aug 2] [--seed 0]

Columns: the whole image, a part of the finest split, a reduce tile, an LPB tile (where the set has them),
the split part re-stained as H&E and as PAS by StainTransfer (full strength), and --n-aug augmented variants
of the split part under --preset. Titles give tile id, fold and FTU share.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from data_prep.augment import PRESETS, STAIN_VECTORS, StainTransfer, train_transforms
from data_prep.tileset import TileSetError, load_index, read_tile
from inference.cli import HelpFormatter
from inference.organs import ORGANS

STAIN_TITLES = {"he": "H&E", "pas": "PAS"}
OUTLINE = (0, 255, 0)  # green reads well on brown/blue HPA and pink/purple H&E alike


def outlined(image: np.ndarray, mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """A copy of an RGB tile with the outlines of its mask's foreground drawn on it."""
    contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    return cv2.drawContours(image.copy(), contours, -1, OUTLINE, thickness)


def _pick(rows: pd.DataFrame, rng: np.random.Generator) -> pd.Series | None:
    """A random tile, preferring ones that show some FTU."""
    if rows.empty:
        return None
    with_ftu = rows[rows["fg_fraction"] > 0]
    pool = with_ftu if len(with_ftu) else rows
    return pool.iloc[int(rng.integers(len(pool)))]


def preview(tiles_dir: Path, out: Path, preset: str = "seed10+stain", n_aug: int = 2, seed: int = 0) -> Path:
    """Draw the preview grid of a tile set to a PNG; return its path."""
    tiles_dir, out = Path(tiles_dir), Path(out)
    index = load_index(tiles_dir)
    rng = np.random.default_rng(seed)
    transform = train_transforms(preset, seed=seed)
    stains = {name: StainTransfer(strength=1.0, stains=(name,), p=1.0) for name in STAIN_VECTORS}
    for k, stain in enumerate(stains.values()):
        stain.set_random_seed(seed + k)  # one transform: its own seed is its own stream
    originals = index[index["source"] == "original"]
    finest = int(originals["split"].max()) if len(originals) else 0
    reduces = sorted(r for r in originals["reduce"].unique() if r > 0)
    columns = [("whole image", originals["split"] == 1)]
    if finest > 1:
        columns.append((f"{finest}x{finest} part", originals["split"] == finest))
    if reduces:
        columns.append((f"reduce {reduces[0]}", originals["reduce"] == reduces[0]))
    organs = [o for o in ORGANS if o in set(index["organ"])]
    n_cols = len(columns) + 1 + len(stains) + n_aug
    fig = Figure(figsize=(2.2 * n_cols, 2.4 * len(organs)), dpi=100, layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(organs), n_cols, squeeze=False))
    for r, organ in enumerate(organs):
        cells: list[tuple[str, pd.Series | None, Callable[..., dict] | None]] = []
        for name, selector in columns:
            cells.append((name, _pick(originals[selector & (originals["organ"] == organ)], rng), None))
        cells.append(("LPB", _pick(index[(index["source"] == "lpb") & (index["organ"] == organ)], rng), None))
        source = cells[1][1] if len(columns) > 1 and cells[1][1] is not None else cells[0][1]
        cells.extend((f"as {STAIN_TITLES[name]}", source, stain) for name, stain in stains.items())
        cells.extend((f"{preset} #{k + 1}", source, transform) for k in range(n_aug))
        for c, (name, row, augment) in enumerate(cells):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=10, fontweight="bold", pad=14)
            if c == 0:
                ax.set_ylabel(organ, fontsize=11, fontweight="bold")
            if row is None:
                ax.text(0.5, 0.5, "none in this set", ha="center", va="center", fontsize=8, color="gray")
                continue
            image, mask = read_tile(tiles_dir, row)
            if augment is not None:
                result = augment(image=image, mask=mask)
                image, mask = result["image"], result["mask"]
            ax.imshow(outlined(image, mask, thickness=max(1, image.shape[0] // 256)))
            ax.text(
                0.5,
                1.01,
                f"{row['tile_id']}  f{row['fold']}  FTU {(mask > 0).mean():.0%}",
                transform=ax.transAxes,
                ha="center",
                va="bottom",
                fontsize=6,
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m data_prep.preview", description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--tiles", type=Path, required=True, help="tile set folder (index.csv)")
    ap.add_argument("--out", type=Path, default=Path("preview.png"))
    ap.add_argument("--preset", choices=PRESETS, default="seed10+stain", help="augmentation for the last columns")
    ap.add_argument("--n-aug", type=int, default=2, help="augmented variants per organ")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        path = preview(args.tiles, args.out, args.preset, args.n_aug, args.seed)
    except TileSetError as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
