"""Multi-resolution network (MRN, Gu et al. 2018): a U-Net whose decoder also sees a wider, coarser context view.

Input: one (N, 6, S, S) tensor, channels 0-2 the tile at the fine um/px, channels 3-5 a context view centred on
the same point that covers `context` x the tile's field, resized to S x S (inference.engine.sliding builds it from the
image for checkpoints with config.json "context" > 1; data_prep.wsi_tiles --context K writes it beside each
tile). Two smp encoders (same name, e.g. "tu-resnet18") encode the views; at every scale the context features'
centre 1/context is cropped, resized to the fine features' size and concatenated to the fine skip, and a
U-Net decoder upsamples with bilinear interpolation or transposed convolutions (the paper found transposed
better). Export to TorchScript (export_torchscript) so the kernel needs only torch.

    python -m train.mrn --tiles TILES --fold 0 [--out outputs] [--name mrn_r18] [--encoder tu-resnet18]
        [--upsampling transpose|bilinear] [--epochs 5] [--bs 8] [--lr 1e-3]

trains on a `data_prep.wsi_tiles --context K` set with a plain torch loop (AdamW, one-cycle, BCE + Dice from
train.fastai_model, flips) and writes OUT/<name>/fold<k>/ (model.ts + config.json with "context": K), which
inference.predict, inference.wsi and the kernel load like any TorchScript checkpoint. This is a stand-alone
trainer: the fastai trainer's MRN support is to be wired in there.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from inference.checkpoint import CheckpointConfig

UPSAMPLING = ("bilinear", "transpose")


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """Upsample by 2 (bilinear or transposed convolution), concatenate the skip, two 3x3 convolutions."""

    def __init__(self, cin: int, skip: int, cout: int, upsampling: str) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin, 2, stride=2) if upsampling == "transpose" else None
        self.convs = nn.Sequential(_conv(cin + skip, cout), _conv(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x) if self.up is not None else F.interpolate(x, scale_factor=2.0, mode="bilinear",
                                                                   align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], 1)
        return self.convs(x)


class MRN(nn.Module):
    """Fine + context encoders, context-fused skips, a U-Net decoder; (N, 6, S, S) -> (N, classes, S, S) logits."""

    def __init__(
        self, encoder: str = "tu-resnet18", context: int = 2, upsampling: str = "transpose", classes: int = 1,
        encoder_weights: str | None = None, decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
    ) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        if context < 2:
            raise ValueError(f"MRN context must be at least 2 (the context view covers context x the tile), got {context}")
        if upsampling not in UPSAMPLING:
            raise ValueError(f"upsampling {upsampling!r} not in {UPSAMPLING}")
        self.context = context
        self.fine = smp.encoders.get_encoder(encoder, in_channels=3, depth=5, weights=encoder_weights)
        self.wide = smp.encoders.get_encoder(encoder, in_channels=3, depth=5, weights=encoder_weights)
        channels = list(self.fine.out_channels)  # (3, c1, ..., c5), strides 1, 2, ..., 32
        fused = [2 * c for c in channels]
        blocks, cin = [], fused[-1]
        for i, cout in enumerate(decoder_channels):
            skip = fused[-2 - i] if i < len(channels) - 2 else 0  # no skip at full resolution (the input itself)
            blocks.append(DecoderBlock(cin, skip, cout, upsampling))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, classes, 3, padding=1)

    def _centre(self, feature: torch.Tensor) -> torch.Tensor:
        """The context feature map's centre 1/context (the fine tile's field), resized to the full map."""
        h, w = feature.shape[-2:]
        ch, cw = max(1, h // self.context), max(1, w // self.context)
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        centre = feature[..., y0 : y0 + ch, x0 : x0 + cw]
        return F.interpolate(centre, size=(h, w), mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine = self.fine(x[:, :3])
        wide = self.wide(x[:, 3:6])
        skips = [torch.cat([f, self._centre(c)], 1) for f, c in zip(fine, wide, strict=True)]
        y = skips[-1]
        for i, block in enumerate(self.decoder):
            index = len(skips) - 2 - i
            y = block(y, skips[index] if index >= 1 else None)
        return self.head(y)


def export_torchscript(model: MRN, folder: Path, config: CheckpointConfig) -> Path:
    """Trace the model at its tile size into folder/model.ts and write config.json (framework torchscript)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    example = torch.randn(1, 6, config.tile_size, config.tile_size)
    with torch.no_grad(), warnings.catch_warnings():  # torch marks jit deprecated; the checkpoint contract uses it
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(folder / "model.ts"))
    data = asdict(config)
    data.update(framework="torchscript", weights="model.ts", context=model.context)
    (folder / "config.json").write_text(json.dumps(data, indent=2) + "\n")
    return folder


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
        import numpy as np

        from data_prep.tiles import read_png
        from train.fastai_data import normalise

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
    from data_prep.tiles import load_index
    from inference.checkpoint import IMAGENET_MEAN, IMAGENET_STD
    from train.fastai_model import SegmentationLoss

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
            total += float(loss) * len(x)
        print(f"mrn epoch {epoch + 1}/{epochs}: train loss {total / len(rows):.4f}")
    size = int(record["size"])
    pixel = float(min(record["mpps"]))
    config = CheckpointConfig(
        name=name, fold=fold, framework="torchscript", task="binary", classes=["ftu"], tile_size=size,
        arch="MRN", encoder=encoder, pixel_size=pixel, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
        context=context, train={"trainer": "train.mrn", "upsampling": upsampling, "epochs": epochs,
                                "tiles": str(tiles_dir)},
    )
    return export_torchscript(model, Path(out) / name / f"fold{fold}", config)


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=Path, required=True, help="a data_prep.wsi_tiles --context K tile set")
    ap.add_argument("--fold", type=int, default=0, help="held-out fold (-1: train on all)")
    ap.add_argument("--out", type=Path, default=Path("outputs"))
    ap.add_argument("--name", default="mrn_r18")
    ap.add_argument("--encoder", default="tu-resnet18", help="smp encoder name")
    ap.add_argument("--upsampling", choices=UPSAMPLING, default="transpose")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--bs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args(argv)
    folder = train_mrn(args.tiles, args.fold, args.out, args.name, args.encoder, args.upsampling, args.epochs,
                       args.bs, args.lr)
    print(f"wrote {folder} (TorchScript MRN, context {json.loads((folder / 'config.json').read_text())['context']})")


if __name__ == "__main__":
    main()
