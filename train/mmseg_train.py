"""Train an mmseg model on one fold of a tile set: UperNet-ConvNeXt (6 classes) or SegFormer (2 classes, FTU / background).

    python -m train.mmseg_train --config train/configs/mmseg/segformer_mit-b5_960.py --fold 0 --tiles TILES
        [--out outputs] [--data-dir DATA] [--minutes M] [--encoder-weights imagenet|none|FILE] [--no-resume]
        [--overwrite] [--max-steps N] [--cfg-options KEY=VALUE ...]
    torchrun --nproc-per-node 4 -m train.mmseg_train --launcher pytorch --config CFG --fold 0 --tiles TILES
(`python -m train.mmseg_upernet` is the former name and runs this.) The flags mean what train.fastai_unet's do
(train.run_folder); from Python: train(config, fold, tiles, out, ...).

Train rows are the tiles with fold != k (LPB blends included); the validation images are those of the fold == k
original tiles, read whole from DATA (default: the competition folder TILES/tiles.json records). --fold -1 trains on
everything without validation. mmengine's Runner validates every val_interval iterations with KernelValLoop
(train.mmseg_ext.dice): the live model, wrapped as its TorchScript export is, predicts each whole validation image
through the inference engine at the scale config.json will make the kernel use, and the best checkpoint is kept by
that Dice. --minutes M fits the run into M minutes of training (train.mmseg_ext.time_budget). A config with
average_k = K > 0 writes the mean of the weights of the K best validations (average_by 'dice') or of the last K
checkpoint intervals ('last') as the fold's model (train.mmseg_ext.averaging), validated again. Writes
outputs/<config-stem>/fold<k>/:
    model.ts         TorchScript (normalised float NCHW at tile size -> 6 logits, or 1 FTU logit for 2-class models),
                     all the Kaggle kernel needs
    config.json      inference.checkpoint.CheckpointConfig (framework "torchscript", task "multiclass" or "binary",
                     pixel_size)
    mmseg_config.py  the resolved mmseg config, with the iterations and schedule actually trained
    best.pth         the fold's weights (best checkpoint, or the average) as an mmengine checkpoint (state_dict + meta)
    metrics.json     kernel validation of best.pth: dice, per organ, per data source, per image; iteration; averaged
    oof/             the kernel's FTU probability of each validation image (inference.predict --save-probs format)
    work/            mmengine's logs and latest checkpoint (written atomically; a re-run resumes from it), and in
                     validations/ the best checkpoint's validation (result and OOF maps: metrics.json and oof/ are
                     copied from it, the images are not predicted again)
A finished folder (metrics.json present) is skipped (--overwrite retrains it); an unfinished one is resumed from its
latest checkpoint (--no-resume starts it over). --encoder-weights: 'imagenet' keeps the ImageNet file the config
names, 'none' trains from random weights, FILE loads a local one. --max-steps N is a smoke run: N iterations, one
validation, config.json and metrics.json marked "smoke": true, which kernels.build refuses.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import torch
from mmengine.config import Config, DictAction
from mmengine.dist import barrier, is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner, find_latest_checkpoint, get_state_dict, weights_to_cpu

from data_prep.tileset import load_index, read_png
from inference.checkpoint import CheckpointConfig
from inference.cli import parser as cli_parser
from inference.organs import CLASSES
from inference.score import format_report
from train import run_folder
from train.averaging import SnapshotPool, check_rule
from train.export import export_segmentor
from train.mmseg_ext.checkpoint import ATOMIC_BACKEND, trust_checkpoints_in
from train.mmseg_ext.dataset import check_ignore_index, fold_rows
from train.mmseg_ext.dice import OOF_MAX_SIDE, iteration_of, kernel_dice, validation_folder
from train.mmseg_ext.time_budget import scaled_schedulers
from train.validation import fold_validation, saved_validation

ARTIFACTS = ("model.ts", "config.json", "mmseg_config.py", "best.pth", "metrics.json")


def parse_args(argv: list[str] | None = None) -> dict:
    """The command line as train()'s keyword arguments (train.run_folder's shared flags, --launcher, --cfg-options)."""
    parser = cli_parser("train.mmseg_train", __doc__)
    run_folder.add_run_arguments(
        parser, config_help="mmseg config under train/configs/mmseg/",
        weights_help="backbone weights: 'imagenet' (the local ImageNet file the config names), 'none' (random) or a "
        "local file such as mmseg's mit_b*.pth or mmpretrain's convnext-*.pth (default: the config's)",
    )
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
    args = vars(parser.parse_args(sys.argv[1:] if argv is None else argv))
    args["config"] = Path(args["config"])
    args["out_root"] = args.pop("out")
    return args


def check_config(cfg: Config, config: Path) -> None:
    """Fail early on settings that would only break hours into a run."""
    n_classes = cfg.model.decode_head.num_classes
    if n_classes not in (2, len(CLASSES)):
        raise ValueError(
            f"{config}: model.decode_head.num_classes is {n_classes}: 2 (background / FTU) or {len(CLASSES)} "
            "(background + 5 organs)"
        )
    head_cfg = cfg.model.get("auxiliary_head")
    if head_cfg is not None and head_cfg.num_classes != n_classes:
        raise ValueError(f"{config}: model.auxiliary_head.num_classes is {head_cfg.num_classes}, expected {n_classes}")
    steps = [step.type for step in cfg.train_dataloader.dataset.pipeline]
    if (n_classes == 2) != ("FtuMask" in steps):
        raise ValueError(
            f"{config}: a 2-class model trains on FTU masks and a {len(CLASSES)}-class one on organ masks: the train "
            f"pipeline needs dict(type='FtuMask') after LoadAnnotations exactly when num_classes is 2 (steps: {steps})"
        )
    check_rule(int(cfg.get("average_k", 0)), str(cfg.get("average_by", "dice")))
    check_ignore_index(cfg.model)
    init_cfg = cfg.model.backbone.get("init_cfg")
    if init_cfg and init_cfg.get("type") == "Pretrained":
        checkpoint = str(init_cfg.checkpoint)
        if "://" in checkpoint or not Path(checkpoint).is_file():
            raise FileNotFoundError(
                f"{config}: backbone weights {checkpoint} are not a local file (runs never download). Download the "
                "file named in the config to that path, point to it with --encoder-weights PATH (or --cfg-options "
                "model.backbone.init_cfg.checkpoint=PATH), or train from scratch with --encoder-weights none "
                "(model.backbone.init_cfg=None)"
            )


def set_backbone_weights(cfg: Config, weights: str | Path) -> None:
    """--encoder-weights: a local file for model.backbone.init_cfg, 'none' for random weights, 'imagenet' as is."""
    if str(weights).lower() == run_folder.RANDOM_WEIGHTS:
        cfg.model.backbone.init_cfg = None
        return
    if str(weights).lower() == "imagenet":  # the ImageNet file the config names
        return
    init_cfg = dict(cfg.model.backbone.get("init_cfg") or {})
    # mmpretrain's classification checkpoints keep the backbone under "backbone."; mmseg's mit_b*.pth do not
    init_cfg.update(type="Pretrained", checkpoint=str(weights))
    cfg.model.backbone.init_cfg = init_cfg


def check_tiles(cfg: Config, tiles: Path, train_rows: pd.DataFrame) -> None:
    """The tile set's tiles must have the config's tile_size."""
    first = read_png(tiles / train_rows["image_path"].iloc[0])
    if first.shape[:2] != (cfg.tile_size, cfg.tile_size):
        raise ValueError(
            f"{tiles} has {first.shape[1]}x{first.shape[0]} px tiles but the config expects {cfg.tile_size} px: "
            f"build tiles with --size {cfg.tile_size} or pass --cfg-options tile_size={first.shape[0]}"
        )


def inference_scale(cfg: Config, train_rows: pd.DataFrame, tiles: Path) -> tuple[float, float]:
    """(reduce_k, pixel_size) for config.json: train.run_folder.inference_scale over the training tiles at their own
    scale (as before the shared rule), with the config's inference.reduce_k when it sets one."""
    return run_folder.inference_scale(train_rows, tiles, int(cfg.tile_size), reduce_k=cfg.inference.get("reduce_k"),
                                      resized=False)


def without_cuda(cfg: Config) -> None:
    """No CUDA device: mixed precision off (AmpOptimWrapper asserts a CUDA device), as the fastai trainer ignores
    mixed_precision on CPU; the GPU recipes otherwise run on CPU unchanged (benchmarks/rehearse.py)."""
    if torch.cuda.is_available() or cfg.optim_wrapper.get("type") != "AmpOptimWrapper":
        return
    for key in ("loss_scale", "dtype"):
        cfg.optim_wrapper.pop(key, None)
    cfg.optim_wrapper.type = "OptimWrapper"
    print("no CUDA device: AmpOptimWrapper -> OptimWrapper (float32 training)")


def smoke_settings(cfg: Config, max_steps: int) -> None:
    """--max-steps N: N iterations, validated and checkpointed once at the end, every iteration logged."""
    cfg.train_cfg.max_iters = int(max_steps)
    cfg.train_cfg.val_interval = int(max_steps)
    cfg.default_hooks.checkpoint.interval = int(max_steps)
    cfg.default_hooks.logger.interval = 1


def fit_schedule(cfg: Config) -> None:
    """Scale the param_scheduler boundaries to train_cfg.max_iters (configs write them for their own max_iters).

    So `--cfg-options train_cfg.max_iters=N` alone gives a complete warm-up and decay over N iterations.
    """
    max_iters = int(cfg.train_cfg.max_iters)
    last = max(int(s.end) for s in cfg.param_scheduler)
    if last == max_iters:
        return
    cfg.param_scheduler = scaled_schedulers(cfg.param_scheduler, last, max_iters)
    print(f"param_scheduler rescaled from {last} to {max_iters} iterations")


def prepare_config(
    cfg: Config,
    tiles: Path,
    fold: int,
    run_dir: Path,
    resume: bool,
    launcher: str,
    checkpoint: CheckpointConfig | None = None,
    data_dir: Path | None = None,
    minutes: float | None = None,
) -> Config:
    """Inject the fold's split, validation, time budget, work folder and launcher into a loaded config."""
    cfg.work_dir = str(run_dir / "work")
    without_cuda(cfg)
    cfg.launcher = launcher
    cfg.resume = resume
    cfg.load_from = None
    # checkpoints written atomically, the new best before the old best is removed (train.mmseg_ext.checkpoint)
    cfg.default_hooks.checkpoint.update(type="AtomicCheckpointHook", backend_args=dict(backend=ATOMIC_BACKEND))
    fit_schedule(cfg)
    cfg.train_dataloader.dataset.update(tiles_dir=str(tiles), fold=fold)
    if fold == -1:  # nothing held out: no validation, the last checkpoint is the result
        cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
        cfg.default_hooks.checkpoint.update(save_best=None, rule=None)
    else:
        cfg.val_dataloader.dataset.update(tiles_dir=str(tiles), fold=fold)
        # the kernel's CheckpointConfig without the training record (that is the config being prepared)
        cfg.val_cfg.update(data_dir=str(data_dir), checkpoint=asdict(replace(checkpoint, train={})))
    hooks = [h for h in cfg.get("custom_hooks", []) if h.type not in ("TimeBudgetHook", "WeightAverageHook")]
    if minutes is not None:
        hooks.append(dict(type="TimeBudgetHook", minutes=float(minutes)))
    k, by = int(cfg.get("average_k", 0)), str(cfg.get("average_by", "dice"))
    if k:
        if fold == -1 and by == "dice":
            raise ValueError("average_by='dice' ranks validations: fold -1 has none, use --cfg-options average_by=last")
        hooks.append(dict(type="WeightAverageHook", folder=str(averaging_folder(cfg)), k=k, by=by))
    cfg.custom_hooks = hooks
    return cfg


def averaging_folder(cfg: Config) -> Path:
    """Where WeightAverageHook keeps its snapshots: inside the run's mmengine work folder (resumed with it)."""
    return Path(cfg.work_dir) / "average"


def record_trained_schedule(cfg: Config, runner: Runner) -> None:
    """Write the iterations, schedule and intervals the run actually used into cfg (a time budget changes them)."""
    max_iters = int(runner.train_loop.max_iters)
    nominal = int(cfg.train_cfg.max_iters)
    if max_iters == nominal:
        return
    cfg.param_scheduler = scaled_schedulers(cfg.param_scheduler, nominal, max_iters)
    cfg.train_cfg.max_iters = max_iters
    cfg.train_cfg.val_interval = int(runner.train_loop.val_interval)
    checkpoint = next((h for h in runner.hooks if isinstance(h, CheckpointHook)), None)
    if checkpoint is not None:
        cfg.default_hooks.checkpoint.interval = int(checkpoint.interval)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The segmentor inside a (distributed) model wrapper."""
    return model.module if is_model_wrapper(model) else model


def backbone_arch(backbone: dict) -> object:
    """What names a backbone's size: ConvNeXt's arch, MiT's embed_dims and num_layers (b0-b5)."""
    if "arch" in backbone:
        return backbone["arch"]
    return {k: backbone[k] for k in ("embed_dims", "num_layers") if k in backbone}


def checkpoint_config(cfg: Config, name: str, fold: int, pixel_size: float, reduce_k: float) -> CheckpointConfig:
    """The config.json of an exported mmseg run: TorchScript, binary (2 classes) or 6 classes, mean/std on 0-1."""
    preprocessor = cfg.model.data_preprocessor
    backbone = cfg.model.backbone
    binary = cfg.model.decode_head.num_classes == 2  # exported with one FTU logit (train.export.SegmentorLogits)
    return CheckpointConfig(
        name=name,
        fold=fold,
        framework="torchscript",
        task="binary" if binary else "multiclass",
        classes=["ftu"] if binary else list(CLASSES),
        tile_size=int(cfg.tile_size),
        weights="model.ts",
        arch=f"EncoderDecoder/{cfg.model.decode_head.type}",
        encoder=f"{backbone.type}({json.dumps(run_folder.json_safe(backbone_arch(backbone)))})",
        overlap=float(cfg.inference.overlap),
        reduce=cfg.inference.reduce,
        reduce_k=float(reduce_k),
        pixel_size=float(pixel_size),
        mean=[m / 255.0 for m in preprocessor.mean],
        std=[s / 255.0 for s in preprocessor.std],
        threshold=float(cfg.inference.threshold),
        train=run_folder.json_safe(cfg.to_dict()),
    )


def finish(
    runner: Runner, cfg: Config, run_dir: Path, checkpoint: CheckpointConfig, train_seconds: float,
    max_steps: int | None = None,
) -> dict:
    """Load the best checkpoint, take its validation (OOF maps) from training or validate it like the kernel when
    training never did (averaged weights, a missing best), and write the checkpoint folder."""
    fold = checkpoint.fold
    barrier()  # rank 0 writes the checkpoints: the last one must be on disk before other ranks look for it
    best = None if fold == -1 else runner.message_hub.get_info("best_ckpt")
    if best is None or not Path(best).is_file():
        latest = find_latest_checkpoint(cfg.work_dir)
        if fold != -1:
            # no validation saved a best, or it was lost (a run of an older version killed between mmengine's
            # removal of the old best and the resume checkpoint naming the new one): the latest checkpoint stands in,
            # validated like any best below
            print(f"warning: best checkpoint {best} not found; the fold's model is the latest checkpoint {latest}")
        best = latest
    if best is None:
        raise RuntimeError(f"no checkpoint found in {cfg.work_dir}: did training reach its first checkpoint?")
    runner.load_checkpoint(best)
    record_trained_schedule(cfg, runner)
    checkpoint = replace(checkpoint, train={**run_folder.json_safe(cfg.to_dict()), **run_folder.smoke_record(max_steps)})
    metrics: dict = {"dice": None, "seconds_trained": round(train_seconds, 1), "averaged": None,
                     **run_folder.smoke_record(max_steps)}
    segmentor = unwrap(runner.model)
    if int(cfg.get("average_k", 0)):
        pool = SnapshotPool(averaging_folder(cfg), int(cfg.average_k), str(cfg.get("average_by", "dice")))
        segmentor.load_state_dict(pool.average())
        metrics.update(averaged=pool.record(), best_checkpoint_dice=runner.message_hub.get_info("best_score"))
        print(f"the fold's model is the mean of the weights at iterations {pool.steps} (by {pool.rule})")
    if is_main_process():
        if fold != -1:
            # the runner's validation of the best checkpoint already ran the submission path: its kept result and
            # OOF maps are the fold's; only weights it never validated (an average, a stand-in latest) are validated
            saved = None if metrics["averaged"] else saved_validation(validation_folder(cfg.work_dir, iteration_of(best)))
            if saved is not None:
                print(f"validation of {Path(best).name} kept from training (not predicted again)")
            loop = runner.val_loop
            result = fold_validation(
                run_dir / "oof", saved,
                lambda on_image: kernel_dice(segmentor, checkpoint, loop.rows, loop.image_dir, on_image=on_image),
                OOF_MAX_SIDE,
            )
            metrics.update(result)
        metrics.update(
            iter=iteration_of(best),
            trained_iters=int(runner.iter),
            fold=fold,
            checkpoint=Path(best).name,
        )
        export_segmentor(segmentor, run_dir, checkpoint)  # model.ts, its torch version, config.json
        meta = dict(iter=metrics["iter"], fold=fold, config=checkpoint.name, dataset_meta=dict(classes=list(CLASSES)))
        run_folder.save_torch({"meta": meta, "state_dict": weights_to_cpu(get_state_dict(segmentor))},
                              run_dir / "best.pth")
        cfg.dump(str(run_dir / "mmseg_config.py"))
        if max_steps is not None:
            print(f"warning: {run_dir} is {run_folder.SMOKE_WARNING}")
        metrics = run_folder.write_metrics(run_dir, metrics)  # last: its presence marks a finished folder
    barrier()
    return metrics


def summary(name: str, fold: int, metrics: dict, run_dir: Path) -> str:
    """The validation Dice (the competition metric) overall, per organ and per data source."""
    if metrics["dice"] is None:
        iters = metrics.get("trained_iters")
        return f"{name} fold {fold}: trained on all folds (no validation), {iters} iterations -> {run_dir}"
    averaged = metrics.get("averaged")
    if averaged:
        which = f"mean of iterations {averaged['steps']}"
        if metrics.get("best_checkpoint_dice") is not None:
            which += f"; the best checkpoint alone scored {metrics['best_checkpoint_dice']:.4f}"
    else:
        which = f"iteration {metrics['iter']}"
    return f"{name} fold {fold}: validation Dice of the submission path ({which}) -> {run_dir}\n" + format_report(metrics)


def train(
    config: str | Path,
    fold: int,
    tiles: Path,
    out_root: Path = Path("outputs"),
    data_dir: Path | None = None,
    *,
    minutes: float | None = None,
    encoder_weights: str | None = None,
    resume: bool = True,
    overwrite: bool = False,
    max_steps: int | None = None,
    grad_checkpointing: bool | None = None,
    launcher: str = "none",
    cfg_options: dict | None = None,
) -> dict:
    """Train one fold of an mmseg config and write its checkpoint folder OUT/<config-stem>/fold<k>; return its metrics.

    The run folder's policy is train.run_folder.prepare's (finished kept, unfinished resumed unless resume=False,
    overwrite retrains); encoder_weights 'imagenet' | 'none' | FILE (None: the config's); max_steps: a smoke run;
    grad_checkpointing: the backbone's own activation checkpointing (model.backbone.with_cp; None: the config's).
    """
    config, tiles = Path(config), Path(tiles)
    name = config.stem
    run_dir = run_folder.run_dir(out_root, name, fold)
    finished = run_folder.prepare(run_dir, resume=resume, overwrite=overwrite, launched=launcher != "none")
    if finished is not None:
        print(f"already trained ({run_dir / run_folder.METRICS}; --overwrite retrains): "
              + summary(name, fold, finished, run_dir))
        return finished

    cfg = Config.fromfile(str(config))
    cfg.merge_from_dict(dict(cfg_options or {}))
    if encoder_weights is not None:
        set_backbone_weights(cfg, encoder_weights)
    if max_steps is not None:
        smoke_settings(cfg, max_steps)
    if grad_checkpointing:
        cfg.model.backbone.with_cp = True  # mmseg's MiT and mmpretrain's ConvNeXt take it
    check_config(cfg, config)
    index = load_index(tiles)
    train_rows = fold_rows(index, fold, "train")
    check_tiles(cfg, tiles, train_rows)
    data_dir = None if fold == -1 else run_folder.resolve_data_dir(data_dir, tiles)
    reduce_k, pixel_size = inference_scale(cfg, train_rows, tiles)
    checkpoint = checkpoint_config(cfg, name, fold, pixel_size, reduce_k)
    checkpoint = replace(checkpoint, train={**checkpoint.train, **run_folder.smoke_record(max_steps)})
    prepare_config(cfg, tiles, fold, run_dir, resume, launcher, checkpoint, data_dir, minutes)
    trust_checkpoints_in(cfg.work_dir)  # resume and best-checkpoint loading of this run's own files

    runner = Runner.from_cfg(cfg)
    start = time.perf_counter()
    runner.train()
    metrics = finish(runner, cfg, run_dir, checkpoint, time.perf_counter() - start, max_steps)
    if is_main_process():
        print(summary(name, fold, metrics, run_dir), flush=True)
    return metrics


def main(argv: list[str] | None = None) -> None:
    """The command line: train one fold."""
    train(**parse_args(argv))


if __name__ == "__main__":
    main()
