"""Train an MRN (train.models.mrn) on a whole-slide tile set with a plain torch loop.

    python -m train.mrn_wsi_tiles --tiles TILES --fold 0 [--out outputs] [--name mrn_r18] [--encoder tu-resnet18]
        [--upsampling transpose|bilinear] [--epochs 5] [--batch-size 8] [--lr 1e-3]

TILES is a `data_prep.wsi_tiles --context K` set (fine tiles with their context views, folds by slide); the loop is
AdamW, one-cycle, BCE + Dice (train.losses), flips. Writes OUT/<name>/fold<k>/ (model.ts + config.json with
"context": K), which inference.predict, inference.wsi and the kernel load like any TorchScript checkpoint. On the
competition's image tile sets, train MRN with the fastai trainer instead (`arch="MRN"`, config mrn_r18_cpu).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from data_prep.tileset import load_index, read_png
from inference.checkpoint import IMAGENET_MEAN, IMAGENET_STD, CheckpointConfig
from inference.cli import HelpFormatter, hidden_alias
from train.export import export_torchscript
from train.fastai_data import normalise
from train.losses import SegmentationLoss
from train.models.mrn import MRN, UPSAMPLING


class ContextTileDataset(torch.utils.data.Dataset):
    """(normalised fine + context view (6, S, S), FTU mask (1, S, S)) per row of a wsi_tiles --context set."""

    def __init__(self, rows, tiles_dir: Path, flips: bool) -> None:
        self.tiles_dir, self.flips = Path(tiles_dir), flips
        self.ids = list(rows["tile_id"])
        self.images, self.masks = list(rows["image_path"]), list(rows["mask_path"])
        missing = [i for i in self.ids[:1] if not (self.tiles_dir / "context" / f"{i}.png").is_file()]
        if missing:
            raise FileNotFoundError(f"{tiles_dir}/context/{missing[0]}.png not found: build the tiles with "
                                    "python -m data_prep.wsi_tiles --context K")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        fine = read_png(self.tiles_dir / self.images[i])
        wide = read_png(self.tiles_dir / "context" / f"{self.ids[i]}.png")
        mask = (read_png(self.tiles_dir / self.masks[i], mask=True) > 0).astype(np.float32)
        x = torch.from_numpy(np.concatenate([normalise(fine), normalise(wide)]))
        y = torch.from_numpy(mask)[None]
        if self.flips and torch.rand(()) < 0.5:  # flips keep the context centred on the tile
            x, y = x.flip(-1), y.flip(-1)
        if self.flips and torch.rand(()) < 0.5:
            x, y = x.flip(-2), y.flip(-2)
        return x, y


def train_mrn(
    tiles_dir: Path, fold: int, out: Path, name: str = "mrn_r18", encoder: str = "tu-resnet18",
    upsampling: str = "transpose", epochs: int = 5, bs: int = 8, lr: float = 1e-3, seed: int = 0,
) -> Path:
    """Fit an MRN on a wsi_tiles --context set (train = folds != fold) and export OUT/name/fold<k> as TorchScript."""
    tiles_dir = Path(tiles_dir)
    record = json.loads((tiles_dir / "wsi_tiles.json").read_text())
    context = int(record.get("context", 1))
    if context < 2:
        raise ValueError(f"{tiles_dir} has no context views; rebuild it with python -m data_prep.wsi_tiles --context 2")
    torch.manual_seed(seed)
    index = load_index(tiles_dir)
    rows = index[index["fold"] != fold] if fold != -1 else index
    loader = torch.utils.data.DataLoader(ContextTileDataset(rows, tiles_dir, flips=True), batch_size=bs, shuffle=True)
    model = MRN(encoder, context, upsampling)
    loss_fn = SegmentationLoss("bce_dice")
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=max(1, epochs * len(loader)))
    model.train()
    for epoch in range(epochs):
        total = 0.0
        for x, y in loader:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(x)
        print(f"mrn epoch {epoch + 1}/{epochs}: train loss {total / len(rows):.4f}")
    size = int(record["size"])
    pixel = float(min(record["mpps"]))
    config = CheckpointConfig(
        name=name, fold=fold, framework="torchscript", task="binary", classes=["ftu"], tile_size=size,
        arch="MRN", encoder=encoder, pixel_size=pixel, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
        context=context, train={"trainer": "train.mrn_wsi_tiles", "upsampling": upsampling, "epochs": epochs,
                                "tiles": str(tiles_dir)},
    )
    example = torch.randn(1, 6, size, size)
    return export_torchscript(model.eval(), example, Path(out) / name / f"fold{fold}", config)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m train.mrn_wsi_tiles", description=__doc__,
                                 formatter_class=HelpFormatter)
    ap.add_argument("--tiles", type=Path, required=True, help="a data_prep.wsi_tiles --context K tile set")
    ap.add_argument("--fold", type=int, default=0, help="held-out fold (-1: train on all)")
    ap.add_argument("--out", type=Path, default=Path("outputs"))
    ap.add_argument("--name", default="mrn_r18")
    ap.add_argument("--encoder", default="tu-resnet18", help="smp encoder name")
    ap.add_argument("--upsampling", choices=UPSAMPLING, default="transpose")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", dest="bs", type=int, default=8, help="tiles per step")
    hidden_alias(ap, "--bs", "--batch-size")  # the old spelling, for one release
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args(argv)
    folder = train_mrn(args.tiles, args.fold, args.out, args.name, args.encoder, args.upsampling, args.epochs,
                       args.bs, args.lr)
    print(f"wrote {folder} (TorchScript MRN, context {json.loads((folder / 'config.json').read_text())['context']})")


if __name__ == "__main__":
    main()
