"""fastai binary UNet trainer: one fold of one experiment config -> a self-describing checkpoint folder.

    python -m train.fastai_unet --config train/configs/fastai/recipes/unet_effb7_768.py --fold 0 --tiles TILES
        [--out outputs] [--data-dir DATA] [--minutes M] [--epochs E] [--batch-size B] [--lr LR] [--seed S]
        [--encoder-weights imagenet|none|FILE] [--average-k K] [--average-by dice|last] [--no-resume] [--overwrite]
        [--max-steps N]
    python -m train.fastai_unet --list                          (the experiments by group, with one-line summaries)
    torchrun --nproc_per_node 2 -m train.fastai_unet ...        (or: accelerate launch -m train.fastai_unet ...)

Writes OUT/<config-stem>/fold<k>/: model.pth (state_dict of the best epoch by validation Dice, or with average_k=K
the mean of the K best or last K epochs' weights, validated again; model.ts TorchScript for arch "MRN" and CoaT
encoders), config.json
(inference.checkpoint.CheckpointConfig), metrics.json (written last: its presence marks a finished run),
history.csv (one row per epoch) and oof/ (out-of-fold probabilities of the validation images: <id>.npy float16
FTU probability, <id>_mask.png 0/255 truth at the same size, longest side <= oof_max_side, and index.csv with
image_id, organ, data_source, img_height, img_width, height, width, prob_path, mask_path).

The validation Dice (checkpoint selection, metrics.json, OOF maps) is the submission path's: every epoch the
model is wrapped in the inference Predictor with the config.json this run writes and run by
train.validation.kernel_validation over fold k's original images (DATA/train_images, DATA from --data-dir or
the tile set's tiles.json) with inference.predict's defaults, so it equals `inference.predict --split train` on
those images. --minutes M gives training M minutes (validation not counted): each of the E epochs trains for
M / E minutes and the LR schedule follows the clock. While training, checkpoints/last.pth (model + optimizer)
and checkpoints/state.json are saved every epoch (atomically, like best.pth and metrics.json), so re-running the
same command after an interruption continues from the last finished epoch on the same LR schedule (--no-resume
starts it over). --max-steps N is a smoke run: N optimizer steps in one epoch, one validation, and config.json /
metrics.json marked "smoke": true (train.run_folder), which kernels.build refuses. From Python:
train(cfg, name, fold, tiles) with cfg a FastaiConfig (load_config(name)[1]).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.schedule import ParamScheduler, combined_cos
from fastai.callback.training import GradientAccumulation
from fastai.distributed import distrib_ctx  # noqa: F401  (patches Learner.distrib_ctx)
from fastai.learner import Learner
from fastai.optimizer import Adam
from fastai.torch_core import distrib_barrier, get_model, num_distrib, rank_distrib, set_seed

from data_prep.augment import REFERENCE_PRESETS
from data_prep.tileset import load_index
from inference.checkpoint import IMAGENET_MEAN, IMAGENET_STD, CheckpointConfig
from inference.cli import hidden_alias
from inference.cli import parser as cli_parser
from inference.score import format_report
from train import run_folder
from train.averaging import SnapshotPool
from train.configs.fastai.base import (
    GROUPS,
    FastaiConfig,
    experiment_names,
    experiment_summaries,
    group_summary,
    load_config,
)
from train.export import export_torchscript
from train.fastai_callbacks import (
    CHECKPOINTS,
    STATE,
    VALIDATIONS,
    AppendingCSVLogger,
    BestCheckpoint,
    ClockScheduler,
    EpochOffset,
    FreezeEncoderBN,
    KernelDice,
    ResumeCheckpoint,
    SkipValidation,
    TrainingClock,
    Validation,
    WeightSnapshots,
    kept_validation,
    load_learner_state,
)
from train.fastai_data import CPUDistributedDL, make_dataloaders, split_rows
from train.losses import SegmentationLoss
from train.models import build_model, enable_gradient_checkpointing, exported_as_torchscript
from train.validation import fold_validation, saved_validation

CLOCK_ITEMS = 10**7  # epoch length under a time budget: the clock ends the epoch long before the loader does


def training_device() -> torch.device:
    """This process's device: its LOCAL_RANK GPU under a launcher, else cuda:0, else CPU."""
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def init_distributed(device: torch.device) -> bool:
    """Join the process group a launcher (torchrun / accelerate launch) set up: nccl on GPU, gloo on CPU."""
    if num_distrib() <= 1:
        return False
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def schedule(cfg: FastaiConfig, moms: tuple[float, ...], start_epoch: int = 0) -> dict:
    """fit_one_cycle's / fit_flat_cos's hyper-parameter curves, cut to the epochs left after start_epoch.

    fastai's own start_epoch skips epochs with a CancelEpochException that breaks SaveModelCallback and
    CSVLogger, so a resumed run fits the remaining epochs on the tail of the full curve instead.
    """
    if cfg.schedule == "one_cycle":
        pct = 0.25 if cfg.pct_start is None else cfg.pct_start
        curves = {"lr": combined_cos(pct, cfg.lr / 25.0, cfg.lr, cfg.lr / 1e5), "mom": combined_cos(pct, *moms)}
    else:
        pct = 0.75 if cfg.pct_start is None else cfg.pct_start
        curves = {"lr": combined_cos(pct, cfg.lr, cfg.lr, cfg.lr / 1e5)}
    done = start_epoch / cfg.epochs
    if done == 0:
        return curves
    return {name: (lambda pos, f=f: f(done + pos * (1.0 - done))) for name, f in curves.items()}


def checkpoint_config(
    cfg: FastaiConfig, name: str, fold: int, train_rows: pd.DataFrame, tiles_dir: Path, max_steps: int | None = None
) -> CheckpointConfig:
    """The config.json of this run: everything inference needs to predict the way validation did."""
    scripted = exported_as_torchscript(cfg)  # the kernel then needs only torch
    crops = cfg.sampler == "crops"
    reduce_k, pixel_size = run_folder.inference_scale(
        train_rows, tiles_dir, cfg.tile_size, pixel_size=cfg.pixel_size if crops else None, reduce_k=cfg.reduce_k
    )
    return CheckpointConfig(
        name=name,
        fold=fold,
        framework="torchscript" if scripted else "smp",
        task="binary",
        classes=["ftu"],
        tile_size=cfg.tile_size,
        weights="model.ts" if scripted else "model.pth",
        context=cfg.context,
        input_mode=cfg.input_mode,
        # what AdaBN's default "unseen" mode reads: the model keeps its statistics on these sources' images
        data_sources=sorted(train_rows["data_source"].astype(str).unique()),
        arch=cfg.arch,
        encoder=cfg.encoder,
        decoder_norm=cfg.decoder_norm,
        overlap=cfg.overlap,
        reduce=cfg.reduce,
        reduce_k=reduce_k,
        pixel_size=pixel_size,
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
        threshold=cfg.threshold,
        train=dict(cfg.to_dict(), tiles=str(tiles_dir), trainer="train.fastai_unet", **run_folder.smoke_record(max_steps)),
    )


def _check_resume(state: dict, record: dict, folder: Path) -> None:
    changed = {k: (state.get(k), v) for k, v in record.items() if state.get(k) != v}
    if changed:
        raise ValueError(
            f"{folder} holds an unfinished run with other settings {changed} (saved, now); "
            f"re-run with the same settings to resume, or delete {folder} to start over"
        )


def _trim_history(path: Path, epochs_done: int) -> None:
    """Drop history rows of epochs that finished after the last saved checkpoint (they are redone)."""
    if path.is_file() and path.stat().st_size > 0:
        history = pd.read_csv(path)
        history[history["epoch"] < epochs_done].to_csv(path, index=False)


def train(
    cfg: FastaiConfig,
    name: str,
    fold: int,
    tiles_dir: Path,
    out_root: Path = Path("outputs"),
    data_dir: Path | None = None,
    *,
    resume: bool = True,
    overwrite: bool = False,
    max_steps: int | None = None,
) -> dict:
    """Train (or resume, or skip when finished) one fold and write its checkpoint folder; return metrics.

    The run folder's policy (train.run_folder.prepare): a finished folder is kept, an unfinished one resumed unless
    resume=False, overwrite retrains either. max_steps: a smoke run of that many optimizer steps (one epoch, one
    validation), marked "smoke" in config.json and metrics.json.
    """
    tiles_dir = Path(tiles_dir)
    folder = run_folder.run_dir(out_root, name, fold)
    finished = run_folder.prepare(folder, resume=resume, overwrite=overwrite, launched=num_distrib() > 1)
    if finished is not None:
        print(f"{folder} is already trained (validation Dice {finished['dice']}); --overwrite trains it again")
        return finished
    if max_steps is not None:  # one epoch of max_steps optimizer steps, on the step count, not a clock
        cfg = replace(cfg, epochs=1, batches_per_epoch=max_steps * cfg.grad_accum, minutes=None)
    device = training_device()
    distributed = init_distributed(device)
    if distributed and rank_distrib() == 0:
        print(f"distributed training: {num_distrib()} processes, backend {torch.distributed.get_backend()}")
    set_seed(cfg.seed + rank_distrib())
    index = load_index(tiles_dir)
    train_rows, valid_rows = split_rows(index, fold, cfg)
    validating = fold != -1
    config = checkpoint_config(cfg, name, fold, train_rows, tiles_dir, max_steps)
    validation = None
    if validating:
        table, image_dir = run_folder.validation_rows(
            run_folder.resolve_data_dir(data_dir, tiles_dir), valid_rows["image_id"]
        )
        validation = Validation(table, image_dir, config, device)
    record = {"config": cfg.to_dict(), "name": name, "fold": fold, "tiles": str(tiles_dir.resolve()),
              **run_folder.smoke_record(max_steps)}

    (folder / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    state_path = folder / CHECKPOINTS / STATE
    state = json.loads(state_path.read_text()) if state_path.is_file() else None
    if state is not None:
        _check_resume(state, record, folder)
    start = 0 if state is None else int(state["epochs_done"])

    clock = None
    if cfg.minutes is not None:
        clock = TrainingClock(cfg.minutes, cfg.epochs, start, float((state or {}).get("seconds_trained") or 0.0))
    dls = make_dataloaders(train_rows, valid_rows, tiles_dir, cfg, device, CLOCK_ITEMS if clock else None)
    if distributed and device.type != "cuda":
        dls.loaders = [CPUDistributedDL(dl) for dl in dls.loaders]
    model = build_model(cfg, weights=start == 0).to(device)
    if cfg.grad_checkpointing:
        print(f"gradient checkpointing: {enable_gradient_checkpointing(model)} blocks recompute their activations")
    learn = Learner(
        dls,
        model,
        loss_func=SegmentationLoss(cfg.loss),
        opt_func=Adam,
        lr=cfg.lr,
        wd=cfg.wd,
        metrics=[KernelDice(validation, folder / CHECKPOINTS / VALIDATIONS, cfg.oof_max_side)] if validation else [],
        path=folder,
        model_dir=CHECKPOINTS,
    )
    if not validating:
        learn.recorder.valid_metrics = False
        learn.add_cb(SkipValidation())
    if device.type == "cuda" and cfg.mixed_precision:
        learn.add_cb(MixedPrecision())
    if cfg.channels_last:
        learn.add_cb(ChannelsLast())
    if cfg.freeze_encoder_bn:
        learn.add_cb(FreezeEncoderBN())

    if cfg.average_k and cfg.average_by == "dice" and not validating:
        raise ValueError(
            "average_by 'dice' ranks epochs by validation Dice and fold -1 has none: pass --average-by last "
            "(or --average-k 0)"
        )
    pool = SnapshotPool(folder / CHECKPOINTS / "snapshots", cfg.average_k, cfg.average_by) if cfg.average_k else None
    tracker = None
    if validating:
        tracker = BestCheckpoint(folder, monitor="dice", comp=np.greater, fname="best", reset_on_fit=False)
        tracker.best = None if state is None or state["best"] is None else state["best"]
    if start:
        load_learner_state(learn, folder / CHECKPOINTS / "last.pth", folder, with_opt=True)
        _trim_history(folder / "history.csv", start)
        print(
            f"resuming {name} fold {fold} after epoch {start} of {cfg.epochs} (best Dice so far {tracker and tracker.best})"
        )
    if start < cfg.epochs:
        if clock is None:
            scheduler = ParamScheduler(schedule(cfg, learn.moms, start))
        else:  # the clock's fraction already counts the time trained before an interruption
            scheduler = ClockScheduler(schedule(cfg, learn.moms), clock)
        cbs = [
            scheduler,
            AppendingCSVLogger("history.csv", append=start > 0),
            EpochOffset(start),
            ResumeCheckpoint(folder, start, record, tracker, clock),
        ]
        if clock is not None:
            cbs.append(clock)
        if tracker is not None:
            cbs.append(tracker)
        if pool is not None:
            cbs.append(WeightSnapshots(pool, start))
        if cfg.grad_accum > 1:
            cbs.append(GradientAccumulation(n_acc=cfg.bs * cfg.grad_accum))
        with learn.distrib_ctx(sync_bn=device.type == "cuda", cpu=device.type == "cpu"):
            learn.fit(cfg.epochs - start, wd=cfg.wd, cbs=cbs)
    elif validating:
        # finished epochs but not the outputs: the best epoch is on disk
        load_learner_state(learn, folder / CHECKPOINTS / "best.pth", folder, with_opt=False)
    result = {}
    if rank_distrib() == 0:  # the other ranks wait: one process evaluates and writes the folder
        averaged = None
        if pool is not None:  # rank 0 kept the snapshots
            get_model(learn.model).load_state_dict(pool.average())
            averaged = pool.record()
            print(f"{name} fold {fold}: the model is the mean of epochs {averaged['steps']} (by {cfg.average_by})")
        seconds = None if clock is None else round(clock.spent, 1)
        result = _write_outputs(learn, cfg, config, folder, validation, len(train_rows), seconds, averaged, max_steps)
    distrib_barrier()
    if distributed:
        torch.distributed.destroy_process_group()
    return result


def _write_outputs(
    learn: Learner,
    cfg: FastaiConfig,
    config: CheckpointConfig,
    folder: Path,
    validation: Validation | None,
    n_train: int,
    seconds_trained: float | None,
    averaged: dict | None = None,
    max_steps: int | None = None,
) -> dict:
    """model.pth, config.json, oof/ and finally metrics.json; then drop the resumable checkpoints.

    averaged: SnapshotPool.record() when the model is a weight average; metrics.json then holds the averaged
    model's Dice (validated again here) beside the best single epoch's (from history.csv).
    """
    model = get_model(learn.model).eval()
    if config.framework == "torchscript":
        views = 2 if config.context > 1 else 1  # MRN: the fine tile and its context view, 3 channels each
        example = torch.randn(1, 3 * views, config.tile_size, config.tile_size)
        export_torchscript(model, example, folder, config)  # model.ts, its torch version, config.json
    else:
        state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        run_folder.save_torch(state_dict, folder / "model.pth")
        config.save(folder)
    history = pd.read_csv(folder / "history.csv") if (folder / "history.csv").is_file() else pd.DataFrame()
    metrics: dict = {
        "dice": None,
        "epochs": cfg.epochs,
        "n_train_rows": n_train,
        "seconds_trained": seconds_trained,
        "steps": int(getattr(learn, "train_iter", 0)),  # optimizer steps of the last (possibly resumed) fit
        "averaged": averaged,
        **run_folder.smoke_record(max_steps),
    }
    if validation is None:
        metrics["note"] = "fold -1 trains on every fold: no validation images, no Dice"
        print(f"{config.name} fold -1: trained on all folds, saved {folder}")
    else:
        start = time.time()
        best_epoch = int(history.loc[history["dice"].idxmax(), "epoch"]) if "dice" in history and len(history) else None
        saved = _kept_best_validation(folder, history, best_epoch, averaged)
        if saved is not None:
            print(f"validation of epoch {best_epoch} kept from training (not predicted again)")
        result = fold_validation(folder / "oof", saved, partial(validation, model, progress=True), cfg.oof_max_side)
        metrics.update(result, best_epoch=best_epoch, valid_seconds=round(time.time() - start, 1))
        chosen = f"best epoch {best_epoch}"
        if averaged is not None:
            metrics["best_epoch_dice"] = float(history["dice"].max())
            chosen = f"mean of epochs {averaged['steps']}; best epoch {best_epoch} scored {metrics['best_epoch_dice']:.4f}"
        print(
            f"{config.name} fold {config.fold}: validation Dice of the submission path ({chosen}; "
            f"an empty prediction scores 0.0000) -> {folder}\n{format_report(result)}"
        )
    if max_steps is not None:
        print(f"warning: {folder} is {run_folder.SMOKE_WARNING}")
    metrics = run_folder.write_metrics(folder, metrics)  # as a re-run reads it back (image ids become strings)
    shutil.rmtree(folder / CHECKPOINTS, ignore_errors=True)
    return metrics


def _kept_best_validation(folder: Path, history: pd.DataFrame, best_epoch: int | None,
                          averaged: dict | None) -> tuple[dict, Path] | None:
    """KernelDice's kept validation of the final weights, when they are the best epoch's (not an average of other
    epochs) and the kept result is that epoch's as history.csv recorded it; else None (validate again)."""
    if best_epoch is None or (averaged is not None and list(averaged["steps"]) != [best_epoch]):
        return None
    saved = saved_validation(kept_validation(folder / CHECKPOINTS / VALIDATIONS, best_epoch))
    recorded = float(history.loc[history["epoch"] == best_epoch, "dice"].iloc[0])
    if saved is None or not math.isclose(float(saved[0]["dice"]), recorded, abs_tol=1e-6):
        return None
    return saved


def list_experiments() -> str:
    """`--list`: the experiments under train/configs/fastai by group folder, each with its docstring's first line."""
    width = max(map(len, experiment_names()))
    blocks = []
    for group in GROUPS:
        lines = [f"{group}/  {group_summary(group)}"]
        lines += [f"  {name:<{width}}  {summary}" for name, summary in experiment_summaries(group).items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line (train.run_folder's shared flags, then the config overrides) and train one fold."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = cli_parser("train.fastai_unet", __doc__)
    run_folder.add_run_arguments(
        parser, config_help="experiment file (or its name) under train/configs/fastai (--list shows them)",
        weights_help="encoder weights: 'imagenet' (timm's), 'none' (random) or a local file (default: the config's)",
    )
    parser.add_argument("--list", action="store_true", help="list the experiments with their summaries and exit")
    parser.add_argument("--epochs", type=int, help="override config epochs")
    parser.add_argument("--batch-size", dest="bs", type=int, help="override config batch size (per process)")
    parser.add_argument("--lr", type=float, help="override config peak learning rate")
    parser.add_argument("--seed", type=int, help="override config seed")
    parser.add_argument("--average-k", type=int, help="override config average_k (0: the best epoch alone)")
    parser.add_argument("--average-by", choices=["dice", "last"], help="override config average_by ('last' at fold -1)")
    parser.add_argument("--histmatch-targets", nargs="+", metavar="IMAGE_OR_DIR",
                        help="override config histmatch_targets (reference images of the '+histmatch' and '+fda' presets)")
    hidden_alias(parser, "--bs", "--batch-size")  # the old spelling, for one release
    if "--list" in argv:  # before the required flags are checked
        print(list_experiments())
        return
    args = parser.parse_args(argv)
    if not (args.tiles / "index.csv").is_file():
        parser.error(f"--tiles {args.tiles}: no index.csv there; build a tile set with python -m data_prep.tiles")
    try:
        name, cfg = load_config(args.config)
    except (FileNotFoundError, ImportError, TypeError) as exc:
        parser.error(str(exc))
    cfg = cfg.override(epochs=args.epochs, bs=args.bs, lr=args.lr, seed=args.seed, minutes=args.minutes,
                       grad_checkpointing=args.grad_checkpointing,
                       average_k=args.average_k, average_by=args.average_by,
                       histmatch_targets=tuple(args.histmatch_targets) if args.histmatch_targets else None)
    if cfg.augment.endswith(REFERENCE_PRESETS) and not cfg.histmatch_targets:
        parser.error(f"augment {cfg.augment!r} adapts crops to reference images: set histmatch_targets in the "
                     "config or pass --histmatch-targets IMAGE_OR_DIR (e.g. unlabeled HuBMAP H&E / PAS images)")
    if args.encoder_weights is not None:  # override() ignores None, which here means random
        weights = None if args.encoder_weights == run_folder.RANDOM_WEIGHTS else args.encoder_weights
        cfg = replace(cfg, encoder_weights=weights)
    train(cfg, name, args.fold, args.tiles, args.out, args.data_dir, resume=args.resume, overwrite=args.overwrite,
          max_steps=args.max_steps)


if __name__ == "__main__":
    main()
