"""One GPU check of the real configs: training speed and memory, export, and the kernel's seconds per image.

    python benchmarks/gpu_check.py [--iters 300] [--train-seconds 25] [--budget-minutes 8] [--n-folds 1]
        [--only NAME ...] [--work benchmarks_out/gpu_check] [--device auto]
    python benchmarks/gpu_check.py --smoke        (CPU, tiny configs and images, under a minute: the test suite's run)

1. Training: each real config (the 768 px fastai UNets, UperNet-ConvNeXt-B, SegFormer-b5) from random weights, at
   its batch size and tile size, with mixed precision and channels_last (fastai: torch.autocast fp16 + GradScaler,
   as fastai's MixedPrecision; mmseg: the config's own optim wrapper, AmpOptimWrapper) on synthetic tiles and masks,
   for --iters iterations or --train-seconds, whichever ends first: iterations/s (after 3 warm-up iterations; one
   iteration = one optimizer step on one per-GPU batch, gradient accumulation not applied), images/s and peak GPU
   memory. The data pipeline is not timed (it runs on the CPU workers).
2. Export: each trained model written as its trainer writes it (model.pth + config.json for smp UNets, model.ts
   through train.export for CoaT and mmseg), seconds to export.
3. Kernel: a 2-family ensemble (fastai UNet + SegFormer-b5, the families the kernel would ship) through
   inference.predict.predict_one on synthetic 3000 px (kidney, HPA, 0.4 um/px) and 4500 px (lung, Hubmap,
   0.7562 um/px) images with 4-flip TTA and, where inference.predict has --tta-scales, flips x scales 0.8/1/1.2:
   seconds per image measured with --n-folds folds per family, scaled to 5 folds (members run one after another),
   and projected to 550 images against the 9 h limit.
Every part is budgeted by time (--budget-minutes in all): a part that would start past its share is skipped and
reported as such. Prints a markdown table per part; writes WORK/results.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inference.checkpoint import IMAGENET_MEAN, IMAGENET_STD, CheckpointConfig  # noqa: E402
from inference.cli import hidden_alias  # noqa: E402
from inference.engine.ensemble import Member  # noqa: E402
from inference.engine.models import resolve_device  # noqa: E402
from inference.engine.predictor import load_predictor  # noqa: E402
from inference.predict import Options, predict_one  # noqa: E402
from train.configs.fastai.base import load_config  # noqa: E402
from train.export import export_torchscript  # noqa: E402
from train.losses import SegmentationLoss  # noqa: E402
from train.models import build_model, fixed_input_size  # noqa: E402

HIDDEN_IMAGES, HOURS_LIMIT, FOLDS = 550, 9.0, 5
MMSEG_DIR = REPO / "train" / "configs" / "mmseg"
# (kind, config): the real configs; the kernel's two families first, so a tight budget skips the others, not them
REAL = [
    ("fastai", "unet_convnext_large_768"),
    ("mmseg", "segformer_mit-b5_960"),
    ("fastai", "unet_coat_lite_medium_768"),
    ("fastai", "unet_effv2_l_768"),
    ("fastai", "unet_effb7_768"),
    ("mmseg", "upernet_convnext-b_768"),
]
KERNEL_FAMILIES = {"fastai": "unet_convnext_large_768", "mmseg": "segformer_mit-b5_960"}
IMAGES = {3000: ("kidney", "HPA", 0.4), 4500: ("lung", "Hubmap", 0.7562)}
# --smoke: the CPU-sized configs at a tiny tile, and small images with the same organs, sources and pixel sizes
SMOKE = [("fastai", "unet_mit_b0_cpu"), ("mmseg", "upernet_convnext-demo"), ("mmseg", "segformer_mit-b0_demo")]
SMOKE_FAMILIES = {"fastai": "unet_mit_b0_cpu", "mmseg": "segformer_mit-b0_demo"}
SMOKE_TILE, SMOKE_IMAGES = 64, {160: ("kidney", "HPA", 0.4), 240: ("lung", "Hubmap", 0.7562)}
SCALES = (0.8, 1.0, 1.2)  # 1st place's multi-scale TTA ratios


def synthetic_batch(n: int, side: int, classes: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images and blob masks (labels 0..classes-1; 2 classes: FTU 1) of n tiles."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, side, side, generator=g)
    blobs = F.interpolate(torch.rand(n, 1, max(1, side // 32), max(1, side // 32), generator=g), size=(side, side))
    organ = torch.randint(1, classes, (n, 1, 1, 1), generator=g)
    y = torch.where(blobs > 0.7, organ, torch.zeros_like(organ)).squeeze(1).long()
    return x.to(device), y.to(device)


def synthetic_image(side: int, seed: int = 0) -> np.ndarray:
    """A tissue-like RGB uint8 image: the timing depends on its size, not its content."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 255, (max(2, side // 64), max(2, side // 64), 3), dtype=np.uint8)
    import cv2

    return cv2.resize(low, (side, side), interpolation=cv2.INTER_CUBIC)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainee:
    """One config's model, optimiser step and checkpoint writer, on synthetic batches."""

    kind: str
    tile: int
    batch: int
    classes: int

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float: ...

    def write(self, folder: Path, geometry: dict) -> None: ...


class FastaiTrainee(Trainee):
    """A fastai config's network (random init) with Adam, fp16 autocast + GradScaler on CUDA, channels_last."""

    kind = "fastai"

    def __init__(self, name: str, device: torch.device, tile: int | None, batch: int | None) -> None:
        stem, cfg = load_config(name)
        cfg = cfg.override(tile_size=tile, bs=batch)
        self.name, self.cfg, self.device = stem, cfg, device
        self.tile, self.batch, self.classes = cfg.tile_size, cfg.bs, 2
        self.model = build_model(dataclasses.replace(cfg, encoder_weights=None)).to(device)
        self.model = self.model.to(memory_format=torch.channels_last)
        self.loss = SegmentationLoss(cfg.loss)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.wd)
        self.amp = device.type == "cuda" and cfg.mixed_precision
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.model.train()
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext():
            loss = self.loss(self.model(x), y[:, None].float())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def write(self, folder: Path, geometry: dict) -> None:
        scripted = fixed_input_size(self.cfg.encoder)
        config = CheckpointConfig(
            name=self.name, fold=0, framework="torchscript" if scripted else "smp", task="binary", classes=["ftu"],
            tile_size=self.tile, weights="model.ts" if scripted else "model.pth", arch=self.cfg.arch,
            encoder=self.cfg.encoder, decoder_norm=self.cfg.decoder_norm, overlap=self.cfg.overlap,
            reduce_k=3000 * 0.4 / self.cfg.pixel_size / self.tile, pixel_size=geometry.get("pixel_size", self.cfg.pixel_size),
            mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
        )
        model = self.model.eval().to(memory_format=torch.contiguous_format)
        if scripted:
            export_torchscript(model, torch.randn(1, 3, self.tile, self.tile), folder, config)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / "model.pth")
            config.save(folder)


class MmsegTrainee(Trainee):
    """An mmseg config's segmentor (random init) stepped through the config's own optim wrapper (AMP on CUDA)."""

    kind = "mmseg"

    def __init__(self, name: str, device: torch.device, tile: int | None, batch: int | None) -> None:
        from mmengine.config import Config
        from mmengine.logging import MMLogger
        from mmengine.optim import build_optim_wrapper

        from train.mmseg_ext.checkpoint import build_segmentor

        cfg = Config.fromfile(str(MMSEG_DIR / f"{name}.py"))
        cfg.model.backbone.init_cfg = None  # random weights: nothing is read or downloaded
        if tile is not None:
            cfg.tile_size = tile
        if batch is not None:
            cfg.train_dataloader.batch_size = batch
        if device.type != "cuda" and cfg.optim_wrapper.type == "AmpOptimWrapper":
            cfg.optim_wrapper.type = "OptimWrapper"  # mmengine's AMP wrapper needs CUDA
            cfg.optim_wrapper.pop("loss_scale", None)
        self.name, self.cfg, self.device = name, cfg, device
        self.tile, self.batch = int(cfg.tile_size), int(cfg.train_dataloader.batch_size)
        self.classes = int(cfg.model.decode_head.num_classes)
        self.model = build_segmentor(cfg).to(device).to(memory_format=torch.channels_last)
        MMLogger.get_instance("gpu_check", log_level="WARNING")  # the optimiser constructor logs every parameter
        self.optim = build_optim_wrapper(self.model, cfg.optim_wrapper)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample

        self.model.train()
        samples = []
        for label in y:
            sample = SegDataSample(gt_sem_seg=PixelData(data=label[None]))
            sample.set_metainfo(dict(img_shape=tuple(label.shape), ori_shape=tuple(label.shape)))
            samples.append(sample)
        with self.optim.optim_context(self.model):
            losses = self.model.loss(x.contiguous(memory_format=torch.channels_last), samples)
        loss, _ = self.model.parse_losses(losses)
        self.optim.update_params(loss)
        return float(loss.detach())

    def write(self, folder: Path, geometry: dict) -> None:
        from train.export import export_segmentor
        from train.mmseg_train import checkpoint_config

        config = checkpoint_config(self.cfg, self.name, 0, geometry["pixel_size"], geometry["reduce_k"])
        segmentor = self.model.eval().to(memory_format=torch.contiguous_format)
        export_segmentor(segmentor, folder, dataclasses.replace(config, train={}))


def mmseg_geometry(tile: int) -> dict:
    """config.json scale of an mmseg run on splits 1,2,3 of 3000 px HPA tiles (as benchmarks/kernel.py): the finest
    split (3) and its tiles' um/px."""
    return dict(reduce_k=3.0, pixel_size=0.4 * 3000 / (3 * tile))


def train_part(trainee: Trainee, iters: int, seconds: float, seed: int = 0) -> dict:
    """Iterations/s, images/s and peak memory of up to `iters` steps or `seconds` (3 warm-up steps not timed)."""
    device = trainee.device
    x, y = synthetic_batch(trainee.batch, trainee.tile, trainee.classes, device, seed)
    losses = [trainee.step(x, y) for _ in range(3)]  # cudnn autotuning, allocator growth
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start, done = time.perf_counter(), 0
    while done < iters and time.perf_counter() - start < seconds:
        losses.append(trainee.step(x, y))
        done += 1
    sync(device)
    elapsed = time.perf_counter() - start
    if not np.isfinite(losses[-1]):
        raise RuntimeError(f"{trainee.name}: the loss is {losses[-1]} after {done} steps")
    return dict(
        iters=done, seconds=round(elapsed, 1), it_s=round(done / elapsed, 2), img_s=round(done * trainee.batch / elapsed, 1),
        peak_gib=None if (m := peak_memory_gib(device)) is None else round(m, 2), loss_first=round(losses[0], 4),
        loss_last=round(losses[-1], 4),
    )


def tta_options(scales: bool) -> Options | None:
    """4-flip TTA, times 1st place's scales when inference.predict has tta_scales (None: not available)."""
    names = {f.name for f in dataclasses.fields(Options)}
    if not scales:
        return Options(tta=4)
    if "tta_scales" not in names:
        return None
    return Options(tta=4, tta_scales=SCALES)


def kernel_part(
    folders: dict[str, Path], images: dict, folds: int, device: torch.device, deadline: float
) -> list[dict]:
    """Seconds per image of the 2-family ensemble (folds folds per family, scaled to 5) with flip (x scale) TTA.

    A (size, TTA) row that would start after `deadline` (perf_counter time) is skipped and says so.
    """
    members = [Member(load_predictor(folder, device), 1.0 / folds) for folder in folders.values() for _ in range(folds)]
    rows = []
    for size, (organ, source, pixel_size) in images.items():
        image = synthetic_image(size)
        for label, scales in (("4 flips", False), ("4 flips x 3 scales", True)):
            options = tta_options(scales)
            if options is None:
                rows.append(dict(size=size, tta=label, note="inference.predict has no --tta-scales on this branch"))
                continue
            if time.perf_counter() > deadline:
                rows.append(dict(size=size, tta=label, note="skipped: budget spent"))
                continue
            # one member of each family on a corner of the image: cudnn autotuning of both networks' window batches
            warm = [members[0], members[folds]]
            corner = image[: size // 3, : size // 3]
            predict_one(corner, organ, pixel_size, warm, options, data_source=source)
            sync(device)
            start = time.perf_counter()
            predict_one(image, organ, pixel_size, members, options, data_source=source, image_id=f"gpu_check{size}")
            sync(device)
            measured = time.perf_counter() - start
            per_image = measured * FOLDS / folds
            rows.append(dict(size=size, organ=organ, source=source, tta=label, folds_measured=folds,
                             s_measured=round(measured, 2), s_per_image_5fold=round(per_image, 2),
                             hours_550=round(per_image * HIDDEN_IMAGES / 3600, 2)))
    return rows


def markdown(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of the given columns (missing values blank)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("" if r.get(c) is None else str(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python benchmarks/gpu_check.py", description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--smoke", action="store_true", help="CPU-sized configs, 64 px tiles, 3 iterations, tiny images")
    ap.add_argument("--iters", type=int, default=300, help="training iterations per config (at most)")
    ap.add_argument("--train-seconds", type=float, default=20.0, help="training seconds per config (at most)")
    ap.add_argument("--budget-minutes", type=float, default=8.0, help="the whole check, all parts")
    ap.add_argument("--n-folds", dest="folds", type=int, default=1,
                    help="folds per family actually run in the kernel part (1-5)")
    hidden_alias(ap, "--folds", "--n-folds")  # the old spelling; --folds is a folds.csv elsewhere
    ap.add_argument("--only", nargs="*", default=None, help="train only these configs (stems)")
    ap.add_argument("--work", type=Path, default=Path("benchmarks_out/gpu_check"))
    ap.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    args = ap.parse_args(argv)
    if not 1 <= args.folds <= FOLDS:
        ap.error(f"--n-folds must be 1 to {FOLDS}, got {args.folds}")
    device = resolve_device("cpu" if args.smoke and args.device == "auto" else args.device)
    if device.type != "cuda" and not args.smoke:
        ap.error("no CUDA device: this check is for one GPU; run --smoke on CPU")
    plan, families, images = (SMOKE, SMOKE_FAMILIES, SMOKE_IMAGES) if args.smoke else (REAL, KERNEL_FAMILIES, IMAGES)
    if args.only is not None:
        unknown = sorted(set(args.only) - {name for _, name in plan})
        if unknown:
            ap.error(f"--only: unknown config(s) {unknown}; choose from {[name for _, name in plan]}")
        plan = [(k, n) for k, n in plan if n in args.only]
    iters, seconds = (3 if args.smoke else args.iters), args.train_seconds
    tile, batch = (SMOKE_TILE, 2) if args.smoke else (None, None)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    budget, start = 60.0 * args.budget_minutes, time.perf_counter()
    # training and export get 55% of the budget, shared by the configs; the kernel part the rest
    train_deadline = start + 0.55 * budget
    train_rows, folders = [], {}
    for i, (kind, name) in enumerate(plan):
        if time.perf_counter() > train_deadline:
            train_rows.append(dict(config=name, note="skipped: training budget spent"))
            continue
        share = (train_deadline - time.perf_counter()) / (len(plan) - i)
        trainee = (FastaiTrainee if kind == "fastai" else MmsegTrainee)(name, device, tile, batch)
        row = dict(config=name, kind=kind, tile=trainee.tile, batch=trainee.batch)
        row.update(train_part(trainee, iters, min(seconds, 0.6 * share)))
        t0 = time.perf_counter()
        folder = args.work / name / "fold0"
        trainee.write(folder, mmseg_geometry(trainee.tile) if kind == "mmseg" else {})
        row["export_s"] = round(time.perf_counter() - t0, 1)
        folders[name] = folder
        train_rows.append(row)
        print(f"{name}: {row}", flush=True)
        del trainee
        if device.type == "cuda":
            torch.cuda.empty_cache()
    kernel_rows = []
    chosen = {kind: folders[name] for kind, name in families.items() if name in folders}
    if len(chosen) < len(families):
        kernel_rows.append(dict(note=f"kernel part skipped: {sorted(set(families.values()) - set(folders))} not trained"))
    else:
        # rows start until 85% of the budget has passed; each is one image, so the last one may overrun by that much
        kernel_rows = kernel_part(chosen, images, args.folds, device, start + 0.85 * budget)
    total = time.perf_counter() - start
    args.work.mkdir(parents=True, exist_ok=True)
    result = dict(device=str(device), name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  smoke=args.smoke, seconds=round(total, 1), train=train_rows, kernel=kernel_rows,
                  ensemble={k: str(v) for k, v in chosen.items()})
    (args.work / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n### Training from random weights on {result['name']} (mixed precision: {device.type == 'cuda'}, channels_last)\n")
    print(markdown(train_rows, ["config", "tile", "batch", "iters", "it_s", "img_s", "peak_gib", "loss_first",
                                "loss_last", "export_s", "note"]))
    print(f"\n### Kernel path: {' + '.join(families.values())}, 5 folds each (measured with {args.folds}), "
          f"projected to {HIDDEN_IMAGES} images (limit {HOURS_LIMIT:g} h)\n")
    print(markdown(kernel_rows, ["size", "organ", "source", "tta", "s_measured", "s_per_image_5fold", "hours_550",
                                 "note"]))
    print(f"\ntotal {total:.0f} s (budget {budget:.0f} s) -> {args.work / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
