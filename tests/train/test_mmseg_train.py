"""mmseg trainer: every config (UperNet, SegFormer) builds, the demo config trains, validates like the kernel, exports,
resumes and fits a time budget; the CPU SegFormer trains as a binary model, averages weights and predicts."""

from __future__ import annotations

import copy
import inspect
import json
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("mmcv", reason="mmcv is built from source by `make venv` (tools/build_mmcv_wheel.sh)")

from counting import count_calls  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmseg.registry import (  # noqa: E402
    DATASETS,
    HOOKS,
    LOOPS,
    MODELS,
    OPTIM_WRAPPER_CONSTRUCTORS,
    OPTIM_WRAPPERS,
    OPTIMIZERS,
    PARAM_SCHEDULERS,
    TRANSFORMS,
)

from data_prep.tileset import load_index  # noqa: E402
from inference.checkpoint import CheckpointConfig  # noqa: E402
from inference.organs import CLASSES  # noqa: E402
from train.export import SegmentorLogits, max_abs_difference  # noqa: E402
from train.export import main as export_main  # noqa: E402
from train.mmseg_ext.checkpoint import build_segmentor, load_segmentor  # noqa: E402
from train.mmseg_ext.dataset import fold_rows  # noqa: E402
from train.mmseg_ext.time_budget import TimeBudgetHook, planned_count, scaled_schedulers  # noqa: E402
from train.mmseg_train import ARTIFACTS, check_config, inference_scale, main, set_backbone_weights  # noqa: E402

pytestmark = pytest.mark.mmseg

CONFIG_DIR = Path(__file__).resolve().parents[2] / "train" / "configs" / "mmseg"
CONFIGS = sorted(CONFIG_DIR.glob("*.py"))
DEMO = CONFIG_DIR / "upernet_convnext-demo.py"
CPU = CONFIG_DIR / "upernet_convnext-cpu.py"
# GroupNorm (or SyncBN) below this many images per GPU: BatchNorm statistics of 2 to 4 images are noise
SMALL_BATCH = 4
# small enough for a CPU test on the 128 px demo tiles; logger every 5 iterations so the loss curve has points
FAST = [
    "tile_size=128",
    "train_cfg.max_iters=30",
    "train_cfg.val_interval=15",
    "default_hooks.checkpoint.interval=15",
    "default_hooks.logger.interval=5",
    "train_dataloader.batch_size=4",
    "train_dataloader.num_workers=0",
    "train_dataloader.persistent_workers=False",
    "val_dataloader.num_workers=0",
    "val_dataloader.persistent_workers=False",
]


def registered(registry, name: str) -> bool:
    return registry.get(name) is not None


def test_config_list_is_complete() -> None:
    stems = {p.stem for p in CONFIGS}
    assert {
        "upernet_convnext-b_768",
        "upernet_convnext-b_768_sgd",
        "upernet_convnext-xl_768",
        "upernet_convnext-b_768_classweight",
        "upernet_convnext-demo",
        "upernet_convnext-cpu",
        "segformer_mit-b3_1024",
        "segformer_mit-b4_960",
        "segformer_mit-b5_960",
        "segformer_mit-b0_cpu",
        "segformer_mit-b0_demo",
    } <= stems


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_builds(config: Path) -> None:
    cfg = Config.fromfile(str(config))
    model = build_segmentor(cfg).eval()  # the real architecture (ConvNeXt-XL: 390M parameters, a few seconds)
    with torch.no_grad():  # tiny input: 64 px is the smallest the 1/32 stage and the pooling pyramid take
        logits = SegmentorLogits(model)(torch.zeros(1, 3, 64, 96))
    binary = config.stem.startswith("segformer")  # 1st place's 2 classes: exported as one FTU logit
    assert model.decode_head.num_classes == (2 if binary else len(CLASSES))
    assert tuple(logits.shape) == (1, 1 if binary else len(CLASSES), 64, 96)
    check_config(replace_init(cfg), config)  # class count, FTU masks for 2 classes, averaging settings
    backbone = MODELS.get(cfg.model.backbone.type)  # --grad-checkpointing sets model.backbone.with_cp
    assert "with_cp" in inspect.signature(backbone).parameters, cfg.model.backbone.type
    # every other registry name the Runner will look up
    for step in cfg.train_dataloader.dataset.pipeline:
        assert registered(TRANSFORMS, step.type), step.type
    for hook in [*cfg.default_hooks.values(), *cfg.custom_hooks]:
        assert registered(HOOKS, hook.type), hook.type
    assert registered(HOOKS, "TimeBudgetHook")  # added by --minutes
    assert registered(DATASETS, cfg.train_dataloader.dataset.type)
    assert registered(DATASETS, cfg.val_dataloader.dataset.type)
    assert registered(LOOPS, cfg.train_cfg.type) and cfg.val_cfg.type == "KernelValLoop"
    assert registered(LOOPS, cfg.val_cfg.type)
    assert registered(OPTIM_WRAPPERS, cfg.optim_wrapper.type)
    assert registered(OPTIMIZERS, cfg.optim_wrapper.optimizer.type)
    assert registered(
        OPTIM_WRAPPER_CONSTRUCTORS, cfg.optim_wrapper.get("constructor", "DefaultOptimWrapperConstructor")
    )
    for scheduler in cfg.param_scheduler:
        assert registered(PARAM_SCHEDULERS, scheduler.type), scheduler.type
    # the schedule covers the whole run
    assert max(s.end for s in cfg.param_scheduler) == cfg.train_cfg.max_iters
    if cfg.train_dataloader.batch_size <= SMALL_BATCH:
        batch_norms = [
            name for name, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]
        assert not batch_norms, (
            f"{config.stem} trains {cfg.train_dataloader.batch_size} images per GPU with {batch_norms}"
        )


def replace_init(cfg: Config) -> Config:
    """The config with a random-init backbone (check_config refuses ImageNet files that are not on disk)."""
    cfg = copy.deepcopy(cfg)
    cfg.model.backbone.init_cfg = None
    return cfg


def test_small_batch_configs_exist() -> None:
    # the norm check above must have something to check: the 768 px configs train 2 to 4 images per GPU
    small = [p.stem for p in CONFIGS if Config.fromfile(str(p)).train_dataloader.batch_size <= SMALL_BATCH]
    assert {"upernet_convnext-b_768", "upernet_convnext-xl_768", "segformer_mit-b5_960"} <= set(small)


@pytest.mark.parametrize("stem", ["upernet_convnext-b_768", "segformer_mit-b5_960"])
def test_missing_backbone_weights_name_the_fix(stem: str) -> None:
    config = CONFIG_DIR / f"{stem}.py"
    with pytest.raises(FileNotFoundError, match="--encoder-weights none"):
        check_config(Config.fromfile(str(config)), config)


def test_two_class_configs_need_the_ftu_mask() -> None:
    config = CONFIG_DIR / "segformer_mit-b0_cpu.py"
    cfg = Config.fromfile(str(config))
    cfg.train_dataloader.dataset.pipeline = [s for s in cfg.train_dataloader.dataset.pipeline if s.type != "FtuMask"]
    with pytest.raises(ValueError, match="FtuMask"):
        check_config(cfg, config)


def test_fold_rows(demo_tiles: Path) -> None:
    index = load_index(demo_tiles)
    train, val = fold_rows(index, 0, "train"), fold_rows(index, 0, "val")
    assert set(train["fold"]) == set(index["fold"]) - {0}
    assert set(val["fold"]) == {0} and set(val["source"]) == {"original"}
    tiles = index[index["source"] != "scaled"]  # whole images at a physical scale are for the fastai crop sampler
    assert len(fold_rows(index, -1, "train")) == len(tiles) and "scaled" not in set(train["source"])
    with pytest.raises(ValueError, match="no validation"):
        fold_rows(index, -1, "val")


def test_tile_size_mismatch_names_the_fix(demo_tiles: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tile_size=128"):
        main(["--config", str(DEMO), "--fold", "0", "--tiles", str(demo_tiles), "--work-dir", str(tmp_path)])


def loss_curve(work_dir: Path) -> list[tuple[int, float]]:
    """(iteration, loss) points of every mmengine scalars log under a work folder, in iteration order."""
    points = []
    for log in work_dir.glob("*/vis_data/scalars.json"):
        for line in log.read_text().splitlines():
            record = json.loads(line)
            if "loss" in record:
                points.append((record["step"], record["loss"]))
    return sorted(points)


def train_demo_fold0(tiles: Path, work_dir: Path) -> None:
    """Train (or skip, when finished) fold 0 of the demo config with the short test schedule."""
    main(
        [
            "--config",
            str(DEMO),
            "--fold",
            "0",
            "--tiles",
            str(tiles),
            "--work-dir",
            str(work_dir),
            "--cfg-options",
            *FAST,
        ]
    )


@pytest.fixture(scope="module")
def demo_run(demo_tiles: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mmseg_outputs")
    train_demo_fold0(demo_tiles, out)
    return out / DEMO.stem / "fold0"


@pytest.mark.slow
def test_demo_trains_and_writes_checkpoint_folder(demo_run: Path, demo_tiles: Path) -> None:
    assert all((demo_run / name).is_file() for name in ARTIFACTS)
    losses = [loss for _, loss in loss_curve(demo_run / "work")]
    assert len(losses) == 6
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses
    config = CheckpointConfig.load(demo_run)
    assert (config.framework, config.task, config.weights) == ("torchscript", "multiclass", "model.ts")
    assert config.classes == list(CLASSES) and config.tile_size == 128
    assert config.mean == pytest.approx([0.485, 0.456, 0.406]) and config.std == pytest.approx([0.229, 0.224, 0.225])
    # the kernel's scale: the finest split trained on (the demo tiles have splits 1 and 2) and its um/px
    train = fold_rows(load_index(demo_tiles), 0, "train")
    finest = train[(train["source"] == "original") & (train["split"] == 2)]
    assert config.reduce_k == 2.0
    assert config.pixel_size == pytest.approx(float(np.median(finest["tile_pixel_size"])))
    metrics = json.loads((demo_run / "metrics.json").read_text())
    val_ids = set(fold_rows(load_index(demo_tiles), 0, "val")["image_id"].astype(str))
    assert 0.0 <= metrics["dice"] <= 1.0 and metrics["n"] == len(val_ids)
    assert set(metrics["per_image"]) == val_ids and metrics["per_organ"] and metrics["per_data_source"]
    assert metrics["iter"] in (15, 30) and metrics["trained_iters"] == 30
    # out-of-fold maps of every image, in the fastai trainer's format
    assert {p.stem for p in (demo_run / "oof").glob("*.npy")} == val_ids
    assert set(pd.read_csv(demo_run / "oof" / "index.csv")["image_id"].astype(str)) == val_ids
    # validation logged whole-image Dice per organ and per source at each validation, and no tile mIoU
    records = [
        json.loads(line)
        for log in (demo_run / "work").glob("*/vis_data/scalars.json")
        for line in log.read_text().splitlines()
    ]
    validations = [r for r in records if "dice" in r]
    assert [r["step"] for r in validations] == [15, 30]
    # only the best checkpoint's validation is kept in the work folder, and it is the fold's metrics and oof/
    kept = demo_run / "work" / "validations"
    assert [p.name for p in kept.iterdir()] == [f"iter_{metrics['iter']}"]
    assert json.loads((kept / f"iter_{metrics['iter']}" / "result.json").read_text())["dice"] == metrics["dice"]
    best = next(r for r in validations if r["step"] == metrics["iter"])
    assert best["dice"] == pytest.approx(metrics["dice"]) and best["dice"] == max(r["dice"] for r in validations)
    organs = {f"dice_{organ}" for organ in metrics["per_organ"]}
    sources = {f"dice_{source}" for source in metrics["per_data_source"]}
    assert all(organs | sources <= set(r) and "mIoU" not in r for r in validations)


@pytest.mark.slow
def test_validation_dice_equals_inference_predict(demo_run: Path, demo_data: Path, tmp_path: Path) -> None:
    """The recorded CV is what `inference.predict --split train` scores on the same validation images."""
    from inference.predict import main as predict_main
    from inference.score import score
    from inference.tables import load_submission, load_train

    metrics = json.loads((demo_run / "metrics.json").read_text())
    out = tmp_path / "train_predictions.csv"
    assert (
        predict_main(
            [
                "--data-dir",
                str(demo_data),
                "--models",
                str(demo_run),
                "--split",
                "train",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    val_ids = {int(i) for i in metrics["per_image"]}
    submission = load_submission(out)
    solution = load_train(demo_data / "train.csv")
    result = score(submission[submission["id"].isin(val_ids)], solution[solution["id"].isin(val_ids)])
    assert result["dice"] == pytest.approx(metrics["dice"], abs=1e-3)
    for image_id, value in result["per_image"].items():
        assert value == pytest.approx(metrics["per_image"][str(image_id)], abs=1e-3), image_id


@pytest.mark.slow
def test_exported_model_matches_best_checkpoint(demo_run: Path) -> None:
    segmentor, cfg = load_segmentor(demo_run / "mmseg_config.py", demo_run / "best.pth")
    scripted = torch.jit.load(str(demo_run / "model.ts"))
    x = torch.randn(2, 3, cfg.tile_size, cfg.tile_size)
    assert max_abs_difference(SegmentorLogits(segmentor).eval(), scripted, x) < 1e-4


@pytest.mark.slow
def test_finished_run_is_skipped(demo_run: Path, demo_tiles: Path) -> None:
    before = {name: (demo_run / name).stat().st_mtime for name in ARTIFACTS}
    train_demo_fold0(demo_tiles, demo_run.parents[1])
    assert {name: (demo_run / name).stat().st_mtime for name in ARTIFACTS} == before


@pytest.mark.slow
def test_unfinished_run_resumes(demo_tiles: Path, tmp_path: Path) -> None:
    short = [*FAST, "train_cfg.max_iters=10", "train_cfg.val_interval=5", "default_hooks.checkpoint.interval=5"]
    args = ["--config", str(DEMO), "--fold", "0", "--tiles", str(demo_tiles), "--out", str(tmp_path)]
    run = tmp_path / DEMO.stem / "fold0"
    main([*args, "--cfg-options", *short])
    (run / "metrics.json").unlink()  # as if the process had died after its last checkpoint
    main([*args, "--cfg-options", *short, "train_cfg.max_iters=20"])  # resumed without asking
    steps = [step for step, _ in loss_curve(run / "work")]
    assert steps == [5, 10, 15, 20]  # continued at iteration 10: none trained twice, none skipped
    assert (run / "work" / "last_checkpoint").read_text().strip().endswith("iter_20.pth")
    assert json.loads((run / "metrics.json").read_text())["iter"] in (5, 10, 15, 20)
    (run / "metrics.json").unlink()
    main([*args, "--no-resume", "--cfg-options", *short, "train_cfg.max_iters=5"])  # started over
    assert [step for step, _ in loss_curve(run / "work")] == [5]


@pytest.mark.slow
def test_resume_survives_a_removed_best_checkpoint(demo_tiles: Path, tmp_path: Path) -> None:
    """Killed after mmengine removed the old best and before the resume checkpoint named the new one: the resume
    checkpoint names a best that is gone. The re-run finishes (today's code: FileNotFoundError) on the latest."""
    from mmengine.runner import CheckpointLoader

    short = [*FAST, "train_cfg.max_iters=10", "train_cfg.val_interval=5", "default_hooks.checkpoint.interval=5"]
    args = ["--config", str(DEMO), "--fold", "0", "--tiles", str(demo_tiles), "--out", str(tmp_path)]
    run = tmp_path / DEMO.stem / "fold0"
    main([*args, "--cfg-options", *short])
    (run / "metrics.json").unlink()
    latest = (run / "work" / "last_checkpoint").read_text().strip()
    best = CheckpointLoader.load_checkpoint(latest)["message_hub"]["runtime_info"]["best_ckpt"]
    for path in (run / "work").glob("best_*.pth"):
        path.unlink()
    main([*args, "--cfg-options", *short])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["checkpoint"] == "iter_10.pth" and Path(best).name.startswith("best_dice_iter_")
    assert 0.0 <= metrics["dice"] <= 1.0 and metrics["n"] == len(fold_rows(load_index(demo_tiles), 0, "val")
                                                                    ["image_id"].unique())


@pytest.mark.slow
def test_max_steps_marks_a_smoke_run_that_kernels_build_refuses(
    demo_tiles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also: the run validates once (the runner's validation of the best checkpoint is the fold's metrics.json and
    oof/; finish used to predict the validation images again)."""
    from kernels.build import build
    from train import mmseg_train
    from train.mmseg_ext import dice

    validations = count_calls(monkeypatch, "kernel_dice", dice, mmseg_train)
    args = ["--config", str(DEMO), "--fold", "0", "--tiles", str(demo_tiles), "--out", str(tmp_path)]
    main([*args, "--max-steps", "2", "--grad-checkpointing", "--cfg-options", *FAST])
    run = tmp_path / DEMO.stem / "fold0"
    assert Config.fromfile(str(run / "mmseg_config.py")).model.backbone.with_cp is True  # trained with it
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["smoke"] is True and metrics["trained_iters"] == 2 and metrics["iter"] == 2
    assert len(validations) == 1
    val_ids = set(fold_rows(load_index(demo_tiles), 0, "val")["image_id"].astype(str))
    assert set(metrics["per_image"]) == val_ids and metrics["n"] == len(val_ids)
    assert {p.stem for p in (run / "oof").glob("*.npy")} == val_ids
    assert set(pd.read_csv(run / "oof" / "index.csv")["image_id"].astype(str)) == val_ids
    assert CheckpointConfig.load(run).train["smoke"] is True
    with pytest.raises(ValueError, match="smoke run"):
        build([run], tmp_path / "dist", user="tester", wheels="none")
    assert (build([run], tmp_path / "dist", user="tester", wheels="none", allow_smoke=True)["weights"]).is_dir()


@pytest.mark.slow
def test_only_this_runs_checkpoints_skip_weights_only(demo_run: Path, tmp_path: Path) -> None:
    from mmengine.runner import CheckpointLoader

    training_checkpoint = demo_run / "work" / "iter_30.pth"
    assert "message_hub" in CheckpointLoader.load_checkpoint(str(training_checkpoint))
    elsewhere = shutil.copy(training_checkpoint, tmp_path / "iter_30.pth")
    with pytest.raises(pickle.UnpicklingError, match="HistoryBuffer|getattr"):
        CheckpointLoader.load_checkpoint(str(elsewhere))


@pytest.mark.slow
def test_fold_minus_one_trains_on_everything(demo_tiles: Path, tmp_path: Path) -> None:
    short = [*FAST, "train_cfg.max_iters=4", "default_hooks.checkpoint.interval=4"]
    main(
        [
            "--config",
            str(DEMO),
            "--fold",
            "-1",
            "--tiles",
            str(demo_tiles),
            "--work-dir",
            str(tmp_path),
            "--cfg-options",
            *short,
        ]
    )
    run = tmp_path / DEMO.stem / "fold-1"
    assert all((run / name).is_file() for name in ARTIFACTS)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dice"] is None and metrics["iter"] == 4
    assert CheckpointConfig.load(run).fold == -1


@pytest.mark.slow
def test_reexport_from_run_folder(demo_run: Path, tmp_path: Path) -> None:
    for name in ("mmseg_config.py", "best.pth", "config.json"):
        shutil.copy(demo_run / name, tmp_path / name)
    export_main(["--run-dir", str(tmp_path)])
    x = torch.randn(1, 3, 128, 128)
    assert (
        max_abs_difference(torch.jit.load(str(demo_run / "model.ts")), torch.jit.load(str(tmp_path / "model.ts")), x)
        < 1e-5
    )


def test_backbone_loads_local_imagenet_weights(tmp_path: Path) -> None:
    cfg = Config.fromfile(str(DEMO))
    source = build_segmentor(cfg)
    # mmpretrain classification checkpoints keep the backbone under "backbone." (the config's prefix strips it)
    weights = {f"backbone.{k}": v for k, v in source.backbone.state_dict().items()}
    torch.save({"meta": {"note": "classification checkpoint"}, "state_dict": weights}, tmp_path / "convnext.pth")
    cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=str(tmp_path / "convnext.pth"), prefix="backbone.")
    check_config(cfg, DEMO)
    model = build_segmentor(cfg)
    model.init_weights()
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


def test_backbone_weights_flag_loads_a_local_mit_file(tmp_path: Path) -> None:
    """--backbone-weights: mmseg's converted mit_b*.pth hold the backbone's own keys (no prefix)."""
    config = CONFIG_DIR / "segformer_mit-b5_960.py"
    cfg = Config.fromfile(str(CONFIG_DIR / "segformer_mit-b0_cpu.py"))
    source = build_segmentor(cfg)
    torch.save({"state_dict": source.backbone.state_dict()}, tmp_path / "mit_b0.pth")
    cfg = Config.fromfile(str(config))
    cfg.model.backbone.update(embed_dims=32, num_layers=[2, 2, 2, 2])  # b0's shape, b5's config and init_cfg
    cfg.model.decode_head.in_channels = [32, 64, 160, 256]
    set_backbone_weights(cfg, tmp_path / "mit_b0.pth")
    check_config(cfg, config)
    model = build_segmentor(cfg)
    model.init_weights()
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    set_backbone_weights(cfg, Path("none"))
    assert cfg.model.backbone.init_cfg is None


def test_time_budget_runs_on_the_wall_clock_unless_given_another() -> None:
    assert TimeBudgetHook(minutes=1).clock is time.perf_counter


def test_scaled_schedulers_keep_proportions() -> None:
    schedule = [
        dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=50),
        dict(type="PolyLR", eta_min=0.0, by_epoch=False, begin=50, end=2000),
    ]
    scaled = scaled_schedulers(schedule, 2000, 400)
    assert [(s["begin"], s["end"]) for s in scaled] == [(0, 10), (10, 400)]
    assert schedule[0]["end"] == 50  # the input is not modified
    assert [(s["begin"], s["end"]) for s in scaled_schedulers(schedule, 2000, 3)] == [(0, 1), (0, 3)]
    with pytest.raises(ValueError, match="by_epoch=False"):
        scaled_schedulers([dict(type="PolyLR", begin=0, end=10)], 10, 5)
    assert planned_count(300, 150) == 2 and planned_count(301, 150) == 3


def test_inference_scale_follows_the_finest_split(demo_tiles: Path) -> None:
    cfg = Config.fromfile(str(DEMO))
    train = fold_rows(load_index(demo_tiles), 0, "train")
    original = train[train["source"] == "original"]
    reduce_k, pixel_size = inference_scale(cfg, train, demo_tiles)
    assert reduce_k == 2.0 and pixel_size == pytest.approx(
        float(np.median(original.loc[original["split"] == 2, "tile_pixel_size"]))
    )
    cfg.inference.reduce_k = 1.0  # a config that asks for whole-image scale gets the whole-image tiles' um/px
    reduce_k, pixel_size = inference_scale(cfg, train, demo_tiles)
    assert reduce_k == 1.0 and pixel_size == pytest.approx(
        float(np.median(original.loc[original["split"] == 1, "tile_pixel_size"]))
    )


def lr_curve(work_dir: Path) -> list[tuple[int, float]]:
    """(iteration, lr) points of the mmengine scalars logs under a work folder."""
    return sorted(
        (json.loads(line)["step"], json.loads(line)["lr"])
        for log in work_dir.glob("*/vis_data/scalars.json")
        for line in log.read_text().splitlines()
        if "lr" in json.loads(line)
    )


@pytest.mark.slow
def test_time_budget_fits_schedule_and_validation(demo_tiles: Path, tmp_path: Path, fake_clock: None) -> None:
    minutes = 0.3
    # a nominal length far beyond what 18 fake seconds allow: the budget, not max_iters, ends the run
    options = [
        *FAST,
        "train_cfg.max_iters=100000",
        "train_cfg.val_interval=50000",
        "default_hooks.checkpoint.interval=50000",
        "default_hooks.logger.interval=1",
    ]
    args = ["--config", str(DEMO), "--fold", "0", "--tiles", str(demo_tiles), "--work-dir", str(tmp_path)]
    main([*args, "--minutes", str(minutes), "--cfg-options", *options])
    run = tmp_path / DEMO.stem / "fold0"
    assert all((run / name).is_file() for name in ARTIFACTS)
    metrics = json.loads((run / "metrics.json").read_text())
    trained = metrics["trained_iters"]
    # after 3 iterations the hook plans 18 (1 s each, no validation measured yet); the validation half-way, at 9,
    # takes 2 s, so at 10 iterations (12 s) it plans 14: 14 iterations and 2 validations spend the 18 s exactly
    assert trained == 14
    # the schedule was fitted to the iterations that fit: it ends near eta_min, not at the start of its decay
    lrs = lr_curve(run / "work")
    assert lrs[-1][0] == trained and lrs[-1][1] < 0.1 * max(lr for _, lr in lrs), lrs[-5:]
    # validated as often as the config asks (100000 / 50000: twice): half-way through the first plan and at the end
    records = [
        json.loads(line)
        for log in (run / "work").glob("*/vis_data/scalars.json")
        for line in log.read_text().splitlines()
    ]
    assert [r["step"] for r in records if "dice" in r] == [9, trained]
    # the folder describes what ran: iterations and schedule as trained
    cfg = Config.fromfile(str(run / "mmseg_config.py"))
    assert cfg.train_cfg.max_iters == trained and max(s.end for s in cfg.param_scheduler) == trained
    assert CheckpointConfig.load(run).train["train_cfg"]["max_iters"] == trained


@pytest.mark.slow
def test_cpu_config_fold_minus_one_with_budget_predicts(
    demo_tiles: Path, demo_data: Path, tmp_path: Path, fake_clock: None
) -> None:
    """The recipe benchmark's call: CPU config, fold -1, --minutes, a seed; its folder goes through inference."""
    from inference.predict import main as predict_main
    from inference.tables import load_submission, load_test

    options = [
        "tile_size=128",
        "train_dataloader.num_workers=0",
        "train_dataloader.persistent_workers=False",
        "randomness.seed=3",
    ]
    main(
        [
            "--config",
            str(CPU),
            "--fold",
            "-1",
            "--tiles",
            str(demo_tiles),
            "--work-dir",
            str(tmp_path),
            "--minutes",
            "0.15",
            "--cfg-options",
            *options,
        ]
    )
    run = tmp_path / CPU.stem / "fold-1"
    assert all((run / name).is_file() for name in ARTIFACTS)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dice"] is None and metrics["trained_iters"] == metrics["iter"]
    assert metrics["trained_iters"] == 9  # 0.15 min = 9 fake seconds of one-second iterations; fold -1 never validates
    out = tmp_path / "submission.csv"
    assert predict_main(["--data-dir", str(demo_data), "--models", str(run), "--out", str(out), "--device", "cpu"]) == 0
    assert list(load_submission(out)["id"]) == list(load_test(demo_data / "test.csv")["id"])


def test_gpu_recipes_train_in_float32_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """AmpOptimWrapper asserts a CUDA device: on CPU (the rehearsal) the recipes fall back to OptimWrapper."""
    from train.mmseg_train import without_cuda

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for stem in ("upernet_convnext-b_768", "upernet_convnext-b_768_sgd", "segformer_mit-b5_960"):
        cfg = Config.fromfile(str(CONFIG_DIR / f"{stem}.py"))
        assert cfg.optim_wrapper.type == "AmpOptimWrapper"
        without_cuda(cfg)
        assert cfg.optim_wrapper.type == "OptimWrapper" and "loss_scale" not in cfg.optim_wrapper
        assert cfg.optim_wrapper.optimizer.type in ("AdamW", "SGD")
