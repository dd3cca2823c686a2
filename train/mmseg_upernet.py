"""Train an mmseg UperNet-ConvNeXt multiclass model (background + 5 organs) on one fold of a tile set.

    python -m train.mmseg_upernet --config train/configs/mmseg/upernet_convnext-b_768.py --fold 0 --tiles TILES
        [--work-dir outputs] [--resume] [--overwrite] [--cfg-options KEY=VALUE ...]
    torchrun --nproc-per-node 4 -m train.mmseg_upernet --launcher pytorch --config CFG --fold 0 --tiles TILES

Train rows are the tiles with fold != k (LPB blends included), validation rows fold == k and source "original";
--fold -1 trains on everything without validation. mmengine's Runner validates every val_interval iterations with
mIoU (mmseg's IoUMetric) and full-image Dice (train.validation.full_image_dice on the probability of each image's
majority class, the inference engine's multiclass rule) and keeps the best checkpoint by Dice. Writes
outputs/<config-stem>/fold<k>/:
    model.ts         TorchScript (normalised float NCHW at tile size -> 6 logits), all the Kaggle kernel needs
    config.json      inference.checkpoint.CheckpointConfig (framework "torchscript", task "multiclass")
    mmseg_config.py  the resolved mmseg config
    best.pth         the best weights as an mmengine checkpoint (state_dict + meta)
    metrics.json     dice (majority class, as inference), dice_foreground (1 - p(background), organ-blind), mIoU,
                     aAcc (fractions), per organ and per image Dice, iteration of the best checkpoint
    work/            mmengine's logs and latest checkpoint (for --resume)
A finished folder (metrics.json present) is skipped; an unfinished one needs --resume or --overwrite.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.dist import barrier, is_main_process
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner, find_latest_checkpoint, get_state_dict, weights_to_cpu

from data_prep.tiles import load_index, read_png
from inference.checkpoint import CheckpointConfig
from inference.organs import CLASSES
from train.export import export_torchscript
from train.mmseg_ext.checkpoint import trust_checkpoints_in
from train.mmseg_ext.dataset import fold_rows
from train.mmseg_ext.dice import segmentor_dice

ARTIFACTS = ("model.ts", "config.json", "mmseg_config.py", "best.pth", "metrics.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="mmseg config under train/configs/mmseg/")
    parser.add_argument("--fold", required=True, type=int, help="validation fold; -1 trains on all folds")
    parser.add_argument("--tiles", required=True, type=Path, help="tile set folder with index.csv")
    parser.add_argument("--work-dir", default=Path("outputs"), type=Path, help="checkpoint root (default outputs)")
    parser.add_argument("--resume", action="store_true", help="continue an unfinished run from its latest checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete the run folder and train from scratch")
    parser.add_argument(
        "--launcher",
        choices=["none", "pytorch", "slurm", "mpi"],
        default="none",
        help="'pytorch' under torchrun for multi-GPU training",
    )
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        default={},
        help="override config keys, e.g. train_cfg.max_iters=1000 train_dataloader.batch_size=2",
    )
    return parser.parse_args(argv)


def run_folder(work_dir: Path, config: Path, fold: int) -> Path:
    """outputs/<config-stem>/fold<k>: the config's stem names the run."""
    return Path(work_dir) / Path(config).stem / f"fold{fold}"


def check_config(cfg: Config, config: Path) -> None:
    """Fail early on settings that would only break hours into a run."""
    for head in ("decode_head", "auxiliary_head"):
        head_cfg = cfg.model.get(head)
        if head_cfg is not None and head_cfg.num_classes != len(CLASSES):
            raise ValueError(f"{config}: model.{head}.num_classes is {head_cfg.num_classes}, expected {len(CLASSES)}")
    init_cfg = cfg.model.backbone.get("init_cfg")
    if init_cfg and init_cfg.get("type") == "Pretrained":
        checkpoint = str(init_cfg.checkpoint)
        if "://" in checkpoint or not Path(checkpoint).is_file():
            raise FileNotFoundError(
                f"{config}: backbone weights {checkpoint} are not a local file (runs never download). Download the "
                "file named in the config to that path, point to it with --cfg-options "
                "model.backbone.init_cfg.checkpoint=PATH, or train from scratch with model.backbone.init_cfg=None"
            )


def check_tiles(cfg: Config, tiles: Path, train_rows) -> None:
    """The tile set's tiles must have the config's tile_size."""
    first = read_png(tiles / train_rows["image_path"].iloc[0])
    if first.shape[:2] != (cfg.tile_size, cfg.tile_size):
        raise ValueError(
            f"{tiles} has {first.shape[1]}x{first.shape[0]} px tiles but the config expects {cfg.tile_size} px: "
            f"build tiles with --size {cfg.tile_size} or pass --cfg-options tile_size={first.shape[0]}"
        )


def prepare_config(cfg: Config, tiles: Path, fold: int, run_dir: Path, resume: bool, launcher: str) -> Config:
    """Inject the fold's split, the work folder and the launcher into a loaded config."""
    cfg.work_dir = str(run_dir / "work")
    cfg.launcher = launcher
    cfg.resume = resume
    cfg.load_from = None
    fit_schedule(cfg)
    cfg.train_dataloader.dataset.update(tiles_dir=str(tiles), fold=fold)
    if fold == -1:  # nothing held out: no validation, the last checkpoint is the result
        cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
        cfg.default_hooks.checkpoint.update(save_best=None, rule=None)
        cfg.custom_hooks = [h for h in cfg.get("custom_hooks", []) if h.type != "FullImageDiceHook"]
    else:
        cfg.val_dataloader.dataset.update(tiles_dir=str(tiles), fold=fold)
    return cfg


def fit_schedule(cfg: Config) -> None:
    """Scale the param_scheduler boundaries to train_cfg.max_iters (configs write them for their own max_iters).

    So `--cfg-options train_cfg.max_iters=N` alone gives a complete warm-up and decay over N iterations.
    """
    max_iters = int(cfg.train_cfg.max_iters)
    last = max(int(s.end) for s in cfg.param_scheduler)
    if last == max_iters:
        return
    for s in cfg.param_scheduler:
        s.begin = round(s.begin * max_iters / last)
        s.end = max(s.begin + 1, round(s.end * max_iters / last))
    print(f"param_scheduler rescaled from {last} to {max_iters} iterations")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The segmentor inside a (distributed) model wrapper."""
    return model.module if is_model_wrapper(model) else model


def evaluate(runner: Runner) -> dict:
    """mIoU and aAcc of runner.model on the validation loader, without firing hooks (all ranks take part)."""
    loop = runner.val_loop
    runner.model.eval()
    with torch.no_grad():
        for batch in loop.dataloader:
            loop.evaluator.process(data_samples=runner.model.val_step(batch), data_batch=batch)
    metrics = loop.evaluator.evaluate(len(loop.dataloader.dataset))
    return {key: float(metrics[key]) / 100.0 for key in ("mIoU", "aAcc")}  # mmseg reports percentages


def iteration_of(checkpoint: str) -> int:
    """Training iteration in an mmengine checkpoint name (iter_300.pth, best_dice_iter_300.pth)."""
    match = re.search(r"iter_(\d+)\.pth$", checkpoint)
    if match is None:
        raise ValueError(f"cannot read the iteration from checkpoint name {checkpoint}")
    return int(match.group(1))


def json_safe(value):
    """A config or metrics value as plain JSON types (tuples become lists, numpy scalars floats, the rest repr)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return repr(value)


def checkpoint_config(cfg: Config, name: str, fold: int, pixel_size: float) -> CheckpointConfig:
    """The config.json of an exported mmseg run: TorchScript, 6 classes, mean/std on the 0-1 scale."""
    preprocessor = cfg.model.data_preprocessor
    backbone = cfg.model.backbone
    return CheckpointConfig(
        name=name,
        fold=fold,
        framework="torchscript",
        task="multiclass",
        classes=list(CLASSES),
        tile_size=int(cfg.tile_size),
        weights="model.ts",
        arch=f"EncoderDecoder/{cfg.model.decode_head.type}",
        encoder=f"{backbone.type}({json.dumps(json_safe(backbone.arch))})",
        overlap=float(cfg.inference.overlap),
        reduce=cfg.inference.reduce,
        reduce_k=float(cfg.inference.reduce_k),
        pixel_size=pixel_size,
        mean=[m / 255.0 for m in preprocessor.mean],
        std=[s / 255.0 for s in preprocessor.std],
        threshold=float(cfg.inference.threshold),
        train=json_safe(cfg.to_dict()),
    )


def finish(runner: Runner, cfg: Config, run_dir: Path, name: str, fold: int, tiles: Path, pixel_size: float) -> dict:
    """Load the best checkpoint, measure it, and write the checkpoint folder (main process writes)."""
    barrier()  # rank 0 writes the checkpoints: the last one must be on disk before other ranks look for it
    if fold == -1:
        best = find_latest_checkpoint(cfg.work_dir)
    else:
        best = runner.message_hub.get_info("best_ckpt")
    if best is None:
        raise RuntimeError(f"no checkpoint found in {cfg.work_dir}: did training reach its first validation?")
    runner.load_checkpoint(best)
    metrics = {"dice": None, "dice_foreground": None, "mIoU": None, "aAcc": None, "per_organ": {}, "per_image": {}}
    if fold != -1:
        metrics.update(evaluate(runner))
    segmentor = unwrap(runner.model)
    if is_main_process():
        if fold != -1:
            rows = runner.val_dataloader.dataset.rows
            dice = segmentor_dice(segmentor, rows, tiles)
            foreground = segmentor_dice(segmentor, rows, tiles, rule="foreground")
            metrics.update(dice=dice["dice"], per_organ=dice["per_organ"], per_image=dice["per_image"])
            metrics.update(dice_foreground=foreground["dice"], per_organ_foreground=foreground["per_organ"])
        metrics.update(iter=iteration_of(best), fold=fold, checkpoint=Path(best).name)
        export_torchscript(segmentor, int(cfg.tile_size), run_dir / "model.ts")
        meta = dict(iter=metrics["iter"], fold=fold, config=name, dataset_meta=dict(classes=list(CLASSES)))
        torch.save({"meta": meta, "state_dict": weights_to_cpu(get_state_dict(segmentor))}, run_dir / "best.pth")
        cfg.dump(str(run_dir / "mmseg_config.py"))
        checkpoint_config(cfg, name, fold, pixel_size).save(run_dir)
        # metrics.json last: its presence marks a finished folder
        (run_dir / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2) + "\n")
    barrier()
    return metrics


def summary(name: str, fold: int, metrics: dict, run_dir: Path) -> str:
    """One line for the log: validation Dice (the competition metric) and mIoU."""
    if metrics["dice"] is None:
        return f"{name} fold {fold}: trained on all folds (no validation) -> {run_dir}"
    return (
        f"{name} fold {fold}: validation Dice {metrics['dice']:.4f}, mIoU {metrics['mIoU']:.4f} "
        f"(iteration {metrics['iter']}) -> {run_dir}"
    )


def train(args: argparse.Namespace) -> dict:
    """Train one fold and write its checkpoint folder; returns its metrics."""
    run_dir = run_folder(args.work_dir, args.config, args.fold)
    name = Path(args.config).stem
    if args.overwrite:
        if args.launcher != "none":
            raise ValueError(f"--overwrite under a launcher would race between processes: delete {run_dir} first")
        shutil.rmtree(run_dir, ignore_errors=True)
    if (run_dir / "metrics.json").is_file():
        metrics = json.loads((run_dir / "metrics.json").read_text())
        print(
            f"already trained ({run_dir / 'metrics.json'}; --overwrite retrains): "
            + summary(name, args.fold, metrics, run_dir)
        )
        return metrics
    if not args.resume and (run_dir / "work" / "last_checkpoint").is_file():
        raise FileExistsError(
            f"{run_dir} holds an unfinished run: pass --resume to continue it or --overwrite to restart"
        )

    cfg = Config.fromfile(str(args.config))
    cfg.merge_from_dict(args.cfg_options)
    check_config(cfg, args.config)
    index = load_index(args.tiles)
    train_rows = fold_rows(index, args.fold, "train")
    check_tiles(cfg, args.tiles, train_rows)
    pixel_size = float(np.median(train_rows["tile_pixel_size"]))
    prepare_config(cfg, args.tiles, args.fold, run_dir, args.resume, args.launcher)
    trust_checkpoints_in(cfg.work_dir)  # resume and best-checkpoint loading of this run's own files

    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = finish(runner, cfg, run_dir, name, args.fold, args.tiles, pixel_size)
    if is_main_process():
        print(summary(name, args.fold, metrics, run_dir), flush=True)
    return metrics


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    train(args)


if __name__ == "__main__":
    main()
