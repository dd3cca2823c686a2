"""Cost of one optimizer step: the fastai recipe (crop sampler + fastai Learner) against the plain loop, one thread.

    python benchmarks/step_cost.py --tiles TILES --data-dir DATA [--config unet_r18_cpu] [--steps 20]

Same encoder, crop size, batch and um/px for both (the plain loop takes the config's), measured one after the
other in this process: the data alone (a batch of the recipe's CropDataset through the fastai DataLoader, against
a batch of benchmarks/plain_loop.py's crops), then --steps training steps of each (fastai fit without validation
or time budget, against the plain loop's loop), as the median ms between optimizer steps (robust to other
processes on a shared machine; run the two sides at a quiet moment all the same). The tile set must hold the config's whole images
(data_prep.tiles --scaled P); DATA is the competition-layout folder it was built from.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
from fastai.callback.core import Callback
from fastai.learner import defaults

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import plain_loop  # noqa: E402

from data_prep.tileset import load_index  # noqa: E402
from inference.checkpoint import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from train import fastai_unet  # noqa: E402
from train.configs.fastai.base import load_config  # noqa: E402
from train.fastai_data import make_dataloaders, split_rows  # noqa: E402


def recipe_data_ms(cfg, tiles: Path, batches: int) -> float:
    """ms per batch of the recipe's training DataLoader (crop sampler, augmentation, normalisation, collation)."""
    train_rows, valid_rows = split_rows(load_index(tiles), -1, cfg)
    loader = make_dataloaders(train_rows, valid_rows, tiles, cfg, torch.device("cpu"), batches * cfg.bs).train
    start = time.perf_counter()
    n = sum(1 for _ in loader)
    return (time.perf_counter() - start) / n * 1000


def plain_data_ms(items: list, cfg, batches: int, rng: np.random.Generator) -> float:
    """ms per batch of the plain loop's crops, flips and normalisation."""
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    start = time.perf_counter()
    for _ in range(batches):
        batch = [plain_loop.crop(*items[rng.integers(len(items))], cfg.tile_size, rng) for _ in range(cfg.bs)]
        x = (np.stack([b[0] for b in batch]).astype(np.float32) / 255.0 - mean) / std
        torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return (time.perf_counter() - start) / batches * 1000


class BatchClock(Callback):
    """Records the time at the end of every training batch (registered as a fastai default callback)."""

    times: list[float] = []

    def after_batch(self) -> None:
        if self.training:
            BatchClock.times.append(time.perf_counter())


def recipe_step_ms(cfg, name: str, tiles: Path, steps: int) -> float:
    """Median ms between optimizer steps of train.fastai_unet.train (fold -1, no time budget, no validation)."""
    cfg = replace(cfg, epochs=1, batches_per_epoch=steps + 1, minutes=None)
    BatchClock.times = []
    defaults.callbacks.append(BatchClock)
    try:
        with tempfile.TemporaryDirectory() as out:
            fastai_unet.train(cfg, name, -1, tiles, Path(out))
    finally:
        defaults.callbacks.remove(BatchClock)
    return float(np.median(np.diff(BatchClock.times))) * 1000


def plain_step_ms(items: list, cfg, steps: int, rng: np.random.Generator) -> float:
    """Median ms per optimizer step of the plain loop's model, loss and torch Adam on its own crops."""
    model = smp.create_model("Unet", encoder_name=cfg.encoder, encoder_weights=None, classes=1).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    dice_loss, bce = smp.losses.DiceLoss("binary", from_logits=True), torch.nn.BCEWithLogitsLoss()
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    times = [time.perf_counter()]
    for _ in range(steps + 1):
        batch = [plain_loop.crop(*items[rng.integers(len(items))], cfg.tile_size, rng) for _ in range(cfg.bs)]
        x = (np.stack([b[0] for b in batch]).astype(np.float32) / 255.0 - mean) / std
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        y = torch.from_numpy(np.stack([b[1] > 0 for b in batch]).astype(np.float32)[:, None])
        logits = model(x)
        loss = bce(logits, y) + dice_loss(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter())
    return float(np.median(np.diff(times[1:]))) * 1000  # the first step pays for allocations


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python benchmarks/step_cost.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=Path, required=True, help="tile set with the config's scaled whole images")
    ap.add_argument("--data-dir", type=Path, required=True, help="the competition-layout data of that tile set")
    ap.add_argument("--config", default="unet_r18_cpu")
    ap.add_argument("--steps", type=int, default=20, help="training steps timed per side")
    ap.add_argument("--batches", type=int, default=50, help="data-only batches timed per side")
    args = ap.parse_args(argv)
    if not (args.tiles / "index.csv").is_file():
        ap.error(f"--tiles {args.tiles} has no index.csv (build it with python -m data_prep.tiles ... --scaled P)")
    torch.set_num_threads(1)
    name, cfg = load_config(args.config)
    rng = np.random.default_rng(0)
    items = plain_loop.load(args.data_dir, float(cfg.pixel_size))
    data = recipe_data_ms(cfg, args.tiles, args.batches), plain_data_ms(items, cfg, args.batches, rng)
    # interleaved halves, so a change in the machine's load hits both sides alike
    recipe_ms, plain_ms = [], []
    for _ in range(2):
        recipe_ms.append(recipe_step_ms(cfg, name, args.tiles, args.steps // 2))
        plain_ms.append(plain_step_ms(items, cfg, args.steps // 2, rng))
    steps = float(np.mean(recipe_ms)), float(np.mean(plain_ms))
    print(f"{name}: {cfg.encoder}, {cfg.tile_size} px crops at {cfg.pixel_size:g} um/px, batch {cfg.bs}, "
          f"{torch.get_num_threads()} thread")
    print("| ms | recipe | plain loop | recipe / plain |\n|---|---|---|---|")
    for label, (ours, plain) in (("data per batch", data), (f"training step ({args.steps} steps)", steps)):
        print(f"| {label} | {ours:.0f} | {plain:.0f} | {ours / plain:.2f} |")


if __name__ == "__main__":
    main()
