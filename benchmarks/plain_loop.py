"""The plain baseline: the ~100-line training loop a competitor writes first, for benchmarks/recipe.py.

    python benchmarks/plain_loop.py --data-dir DATA --out RUN/fold-1 --minutes 20 [--seed 0] [--pixel-size 0.8]
    python benchmarks/plain_loop.py --data-dir DATA --out RUN/fold-1 --steps 1500 [--save-at 250,500,1000] ...

Whole train images resampled to --pixel-size um/px, random --tile px crops (half centred on a random FTU
pixel), flips and 90-degree rotations, an smp UNet-ResNet18 (--encoder) from random weights, BCE + Dice, Adam at a
constant 1e-3, batch 8, for --minutes of training or --steps optimizer steps (--save-at also keeps
RUN/fold-1/snapshots/step<N>/ checkpoint folders after those steps, for benchmarks/domain_curves.py). It writes a checkpoint folder (config.json + model.pth)
that inference.predict reads, so the baseline is scored by exactly the same inference as the recipe.
Deliberately none of the recipe's choices: no organ balance, no per-FTU centring, no scale jitter, no
schedule, no colour augmentation, no validation.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.checkpoint import IMAGENET_MEAN, IMAGENET_STD, CheckpointConfig  # noqa: E402
from inference.cli import hidden_alias  # noqa: E402
from inference.io import read_image  # noqa: E402
from inference.rle import decode  # noqa: E402
from inference.tables import load_train  # noqa: E402
from inference.tiling import resize_image  # noqa: E402


def load(data_dir: Path, pixel_size: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every train image and its binary FTU mask, resampled to pixel_size um/px."""
    items = []
    for r in load_train(data_dir / "train.csv").itertuples(index=False):
        image = read_image(data_dir / "train_images" / f"{r.id}.tiff")
        mask = decode(r.rle, r.img_height, r.img_width)
        h, w = round(r.img_height * r.pixel_size / pixel_size), round(r.img_width * r.pixel_size / pixel_size)
        items.append((resize_image(image, h, w), resize_image(mask, h, w, nearest=True)))
    return items


def crop(image: np.ndarray, mask: np.ndarray, tile: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A tile x tile crop (reflect-padded when the image is smaller), half of the time around an FTU pixel."""
    pad_h, pad_w = max(0, tile - image.shape[0]), max(0, tile - image.shape[1])
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
        mask = np.pad(mask, ((0, pad_h), (0, pad_w)), mode="reflect")
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(ys) and rng.random() < 0.5:
        k = rng.integers(len(ys))
        y0 = int(np.clip(ys[k] - tile // 2, 0, h - tile))
        x0 = int(np.clip(xs[k] - tile // 2, 0, w - tile))
    else:
        y0, x0 = int(rng.integers(h - tile + 1)), int(rng.integers(w - tile + 1))
    image, mask = image[y0 : y0 + tile, x0 : x0 + tile], mask[y0 : y0 + tile, x0 : x0 + tile]
    k = int(rng.integers(4))
    image, mask = np.rot90(image, k), np.rot90(mask, k)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return image, mask


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    budget = ap.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="training wall time")
    budget.add_argument("--steps", type=int, help="optimizer steps")
    ap.add_argument("--save-at", default="", help="comma-separated steps after which to keep a checkpoint folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pixel-size", type=float, default=0.8)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch-size", dest="bs", type=int, default=8, help="crops per optimizer step")
    hidden_alias(ap, "--bs", "--batch-size")  # the old spelling
    ap.add_argument("--encoder", default="tu-resnet18", help="smp encoder, random weights")
    args = ap.parse_args(argv)
    try:
        save_at = {int(s) for s in args.save_at.split(",") if s}
    except ValueError:
        ap.error(f"--save-at must be comma-separated integers, got {args.save_at!r}")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    items = load(args.data_dir, args.pixel_size)
    sources = sorted(load_train(args.data_dir / "train.csv")["data_source"].astype(str).unique())
    model = smp.create_model("Unet", encoder_name=args.encoder, encoder_weights=None, classes=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    dice_loss = smp.losses.DiceLoss("binary", from_logits=True)
    bce = torch.nn.BCEWithLogitsLoss()
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    model.train()
    start, steps = time.perf_counter(), 0
    def done() -> bool:
        return steps >= args.steps if args.steps is not None else time.perf_counter() - start >= args.minutes * 60

    def config(run_steps: int) -> CheckpointConfig:
        return CheckpointConfig(
            name="plain_loop", fold=-1, framework="smp", task="binary", classes=["ftu"], tile_size=args.tile,
            encoder=args.encoder, reduce_k=1.0, pixel_size=args.pixel_size, data_sources=sources,
            train={"steps": run_steps, "seed": args.seed},
        )

    while not done():
        batch = [crop(*items[rng.integers(len(items))], args.tile, rng) for _ in range(args.bs)]
        x = (np.stack([b[0] for b in batch]).astype(np.float32) / 255.0 - mean) / std
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        y = torch.from_numpy(np.stack([b[1] > 0 for b in batch]).astype(np.float32)[:, None])
        logits = model(x)
        loss = bce(logits, y) + dice_loss(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
        if steps in save_at:
            snapshot = args.out / "snapshots" / f"step{steps}"
            snapshot.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), snapshot / "model.pth")
            config(steps).save(snapshot)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / "model.pth")
    config(steps).save(args.out)
    print(f"plain loop: {steps} steps of batch {args.bs} in {time.perf_counter() - start:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
