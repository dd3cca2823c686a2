"""Training throughput (images/second) of the fastai UNet trainer's step: forward, BCE+Dice, backward, Adam.

    python benchmarks/train_fastai.py [--batches 12] [--warmup 3] [--threads N]

Runs fastai's Learner.fit over synthetic in-memory batches (tile decoding and augmentation excluded) for
the demo config unet_r18_demo on CPU, and, when CUDA is available, unet_effb7_768 at 768 px four ways:
fp32, mixed precision, channels_last, both; ratios are against fp32 measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastai.callback.channelslast import ChannelsLast  # noqa: E402
from fastai.callback.core import Callback  # noqa: E402
from fastai.callback.fp16 import MixedPrecision  # noqa: E402
from fastai.data.core import DataLoaders  # noqa: E402
from fastai.data.load import DataLoader  # noqa: E402
from fastai.learner import Learner  # noqa: E402
from fastai.optimizer import Adam  # noqa: E402

from train.configs.fastai.base import FastaiConfig, load_config  # noqa: E402
from train.fastai_unet import SkipValidation  # noqa: E402
from train.losses import SegmentationLoss  # noqa: E402
from train.models import build_model  # noqa: E402


class SyntheticTiles(Dataset):
    """n normalised random tiles with a blob mask, precomputed so data loading costs nothing."""

    def __init__(self, n: int, size: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, size, size, generator=gen)
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        self.y = (((yy - size / 2) ** 2 + (xx - size / 3) ** 2) < (size / 5) ** 2).float()[None].expand(n, 1, -1, -1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class BatchClock(Callback):
    """Wall time of every training batch, synchronised with the GPU."""

    order = 100

    def before_fit(self) -> None:
        self.times: list[float] = []
        self.last = self._now()

    def _now(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def after_batch(self) -> None:
        if self.training:
            now = self._now()
            self.times.append(now - self.last)
            self.last = now


def images_per_second(
    cfg: FastaiConfig, device: torch.device, batches: int, warmup: int, amp: bool = False, channels_last: bool = False
) -> float:
    """Training images/second of one config over `batches` timed batches after `warmup` untimed ones."""
    n = (batches + warmup) * cfg.bs
    data = SyntheticTiles(n, cfg.tile_size)
    train_dl = DataLoader(data, bs=cfg.bs, shuffle=False, drop_last=True, device=device)
    dls = DataLoaders(train_dl, DataLoader(SyntheticTiles(0, cfg.tile_size), bs=cfg.bs, device=device), device=device)
    model = build_model(replace(cfg, encoder_weights=None)).to(device)
    clock = BatchClock()
    cbs: list[Callback] = [clock, SkipValidation()]
    if amp:
        cbs.append(MixedPrecision())
    if channels_last:
        cbs.append(ChannelsLast())
    learn = Learner(dls, model, loss_func=SegmentationLoss(cfg.loss), opt_func=Adam, lr=cfg.lr, cbs=cbs)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1)
    timed = clock.times[warmup:]
    return cfg.bs * len(timed) / sum(timed)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=12, help="timed batches per measurement")
    ap.add_argument("--warmup", type=int, default=3, help="untimed batches first (allocator, cuDNN autotune)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    _, demo = load_config("unet_r18_demo")
    cpu = images_per_second(demo, torch.device("cpu"), args.batches, args.warmup)
    print(f"CPU ({torch.get_num_threads()} threads) unet_r18_demo, {demo.tile_size} px, bs {demo.bs}: {cpu:.1f} img/s")
    print(f"  -> one demo epoch ({demo.batches_per_epoch} batches) ~ {demo.batches_per_epoch * demo.bs / cpu:.1f} s")
    if not torch.cuda.is_available():
        print("CUDA not available: unet_effb7_768 mixed precision / channels_last comparison skipped")
        return
    _, effb7 = load_config("unet_effb7_768")
    gpu = torch.device("cuda")
    print(f"{torch.cuda.get_device_name()}: unet_effb7_768, {effb7.tile_size} px, bs {effb7.bs}")
    base = images_per_second(effb7, gpu, args.batches, args.warmup)
    for label, amp, cl in (("fp32", False, False), ("amp", True, False), ("cl", False, True), ("amp+cl", True, True)):
        rate = base if label == "fp32" else images_per_second(effb7, gpu, args.batches, args.warmup, amp, cl)
        print(f"  {label:7s} {rate:7.1f} img/s  x{rate / base:.2f} vs fp32")


if __name__ == "__main__":
    main()
