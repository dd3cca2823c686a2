"""MRN against the plain UNet at equal wall time, on demo slides.

    python benchmarks/mrn.py [--n-slides 4] [--side 3072] [--size 96] [--tile-mpp 2.0] [--context 2] [--seconds 120]
        [--tiles-per-slide 80] [--upsampling transpose] [--keep DIR]

Makes demo slides (data_prep.make_demo --n-slides), one wsi_tiles set with --context views, then trains a
plain smp Unet (the fine tile only) and an MRN (fine tile + context view) from random init with the same
loss (train.losses.SegmentationLoss), optimiser, batch size and flips for the same number of seconds
each, and reports the held-out fold's pooled pixel Dice per organ and overall, with the steps each got.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from data_prep.make_demo import make_slides  # noqa: E402
from data_prep.tileset import load_index  # noqa: E402
from data_prep.wsi_tiles import build_wsi_tiles  # noqa: E402
from inference.cli import hidden_alias  # noqa: E402
from train.losses import SegmentationLoss  # noqa: E402
from train.models.mrn import MRN  # noqa: E402
from train.mrn_wsi_tiles import ContextTileDataset  # noqa: E402


class FineOnly(torch.nn.Module):
    """The plain UNet sees channels 0-2 (the fine tile) of the MRN input."""

    def __init__(self) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.net = smp.create_model("Unet", encoder_name="tu-resnet18", encoder_weights=None, classes=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[:, :3])


def fit_for(model: torch.nn.Module, loader, seconds: float, lr: float) -> int:
    """Train until `seconds` have passed; return the optimiser steps taken."""
    loss_fn = SegmentationLoss("bce_dice")
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            steps += 1
            if time.perf_counter() - start >= seconds:
                break
    return steps


@torch.no_grad()
def dice_by_group(model: torch.nn.Module, dataset, organs: list[str], sources: list[str]) -> dict[str, float]:
    """Pooled pixel Dice of the held-out tiles, per organ, per data source and overall."""
    model.eval()
    inter: dict[str, float] = {}
    total: dict[str, float] = {}
    for i in range(len(dataset)):
        x, y = dataset[i]
        pred = model(x[None])[0].sigmoid() > 0.5
        for key in (organs[i], sources[i], "all"):
            inter[key] = inter.get(key, 0.0) + float((pred & (y > 0)).sum())
            total[key] = total.get(key, 0.0) + float(pred.sum() + (y > 0).sum())
    return {k: 2 * inter[k] / total[k] if total[k] else 1.0 for k in total}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-slides", type=int, default=4, help="synthetic slides")
    ap.add_argument("--side", type=int, default=3072)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--tile-mpp", type=float, default=2.0, help="tile um/px (data_prep.wsi_tiles --tile-mpp)")
    ap.add_argument("--context", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--tiles-per-slide", type=int, default=80)
    ap.add_argument("--upsampling", default="transpose")
    ap.add_argument("--batch-size", dest="bs", type=int, default=8, help="tiles per optimizer step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--keep", type=Path)
    # the old spellings: --slides is a slides CSV and --mpp a slide's own um/px elsewhere
    for old, new in (("--slides", "--n-slides"), ("--mpp", "--tile-mpp"), ("--bs", "--batch-size")):
        hidden_alias(ap, old, new)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.keep or Path(scratch)
        slides = work / "slides" / "slides.csv"
        if not slides.is_file():
            make_slides(slides.parent, args.n_slides, seed=0, side=args.side)
        tiles = work / "tiles"
        build_wsi_tiles(slides, tiles, size=args.size, mpps=(args.tile_mpp,), tiles_per_slide=args.tiles_per_slide,
                        centre=args.size // 4, context=args.context, n_folds=2)
        index = load_index(tiles)
        train_rows, valid_rows = index[index["fold"] != 0], index[index["fold"] == 0]
        loader = torch.utils.data.DataLoader(ContextTileDataset(train_rows, tiles, flips=True), batch_size=args.bs,
                                             shuffle=True)
        valid = ContextTileDataset(valid_rows, tiles, flips=False)
        organs, sources = list(valid_rows["organ"]), list(valid_rows["data_source"])
        results = {}
        for name, build in (("unet", FineOnly), ("mrn", lambda: MRN("tu-resnet18", args.context, args.upsampling))):
            torch.manual_seed(0)
            model = build()
            steps = fit_for(model, loader, args.seconds, args.lr)
            results[name] = (steps, dice_by_group(model, valid, organs, sources))
    print(f"{len(train_rows)} train / {len(valid_rows)} held-out tiles of {args.size} px at {args.tile_mpp} um/px "
          f"(context {args.context}x), {args.seconds:.0f} s of training each on {torch.get_num_threads()} thread(s)")
    for name, (steps, scores) in results.items():
        per_organ = ", ".join(f"{k} {v:.3f}" for k, v in sorted(scores.items()) if k != "all")  # organs, sources
        print(f"{name:5s}: {steps} steps, held-out Dice {scores['all']:.3f} ({per_organ})")


if __name__ == "__main__":
    main()
