"""mmseg UperNet trainer: every config builds, the demo config trains, exports, and resumes."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mmcv", reason="mmcv is built from source by `make venv` (tools/build_mmcv_wheel.sh)")

from mmengine.config import Config  # noqa: E402
from mmseg.registry import (  # noqa: E402
    DATASETS,
    HOOKS,
    LOOPS,
    METRICS,
    OPTIM_WRAPPER_CONSTRUCTORS,
    OPTIM_WRAPPERS,
    OPTIMIZERS,
    PARAM_SCHEDULERS,
    TRANSFORMS,
)

from data_prep.tiles import load_index  # noqa: E402
from inference.checkpoint import CheckpointConfig  # noqa: E402
from inference.organs import CLASSES  # noqa: E402
from train.export import SegmentorLogits, export_torchscript, max_abs_difference  # noqa: E402
from train.export import main as export_main  # noqa: E402
from train.mmseg_ext.checkpoint import build_segmentor, load_segmentor  # noqa: E402
from train.mmseg_ext.dataset import fold_rows  # noqa: E402
from train.mmseg_ext.dice import ftu_predictor, segmentor_dice  # noqa: E402
from train.mmseg_upernet import ARTIFACTS, check_config, main  # noqa: E402

pytestmark = pytest.mark.mmseg

CONFIG_DIR = Path(__file__).resolve().parents[1] / "train" / "configs" / "mmseg"
CONFIGS = sorted(CONFIG_DIR.glob("*.py"))
DEMO = CONFIG_DIR / "upernet_convnext-demo.py"
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
    } <= stems


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_builds(config: Path) -> None:
    cfg = Config.fromfile(str(config))
    model = build_segmentor(cfg).eval()  # the real architecture (ConvNeXt-XL: 390M parameters, a few seconds)
    with torch.no_grad():  # tiny input: 64 px is the smallest the 1/32 stage and the pooling pyramid take
        logits = SegmentorLogits(model)(torch.zeros(1, 3, 64, 96))
    assert tuple(logits.shape) == (1, len(CLASSES), 64, 96)
    assert model.decode_head.num_classes == len(CLASSES)
    # every other registry name the Runner will look up
    for step in [*cfg.train_dataloader.dataset.pipeline, *cfg.val_dataloader.dataset.pipeline]:
        assert registered(TRANSFORMS, step.type), step.type
    for hook in [*cfg.default_hooks.values(), *cfg.custom_hooks]:
        assert registered(HOOKS, hook.type), hook.type
    assert registered(DATASETS, cfg.train_dataloader.dataset.type)
    assert registered(METRICS, cfg.val_evaluator.type)
    assert registered(LOOPS, cfg.train_cfg.type) and registered(LOOPS, cfg.val_cfg.type)
    assert registered(OPTIM_WRAPPERS, cfg.optim_wrapper.type)
    assert registered(OPTIMIZERS, cfg.optim_wrapper.optimizer.type)
    assert registered(
        OPTIM_WRAPPER_CONSTRUCTORS, cfg.optim_wrapper.get("constructor", "DefaultOptimWrapperConstructor")
    )
    for scheduler in cfg.param_scheduler:
        assert registered(PARAM_SCHEDULERS, scheduler.type), scheduler.type
    # the schedule covers the whole run
    assert max(s.end for s in cfg.param_scheduler) == cfg.train_cfg.max_iters


def test_missing_backbone_weights_name_the_fix() -> None:
    config = CONFIG_DIR / "upernet_convnext-b_768.py"
    with pytest.raises(FileNotFoundError, match="model.backbone.init_cfg=None"):
        check_config(Config.fromfile(str(config)), config)


def test_export_matches_eager(tmp_path: Path) -> None:
    model = build_segmentor(Config.fromfile(str(DEMO))).eval()
    path = export_torchscript(model, 64, tmp_path / "model.ts")
    x = torch.randn(3, 3, 64, 64)
    assert max_abs_difference(SegmentorLogits(model).eval(), torch.jit.load(str(path)), x) < 1e-4


def test_ftu_predictor_rules() -> None:
    torch.manual_seed(0)
    model = build_segmentor(Config.fromfile(str(DEMO))).eval()
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    x = (
        torch.from_numpy(images).permute(0, 3, 1, 2).float() - model.data_preprocessor.mean
    ) / model.data_preprocessor.std
    with torch.no_grad():
        probs = SegmentorLogits(model)(x).softmax(1).numpy()
    counts = np.bincount(probs.argmax(1).ravel(), minlength=len(CLASSES))[1:]
    majority = 1 + int(np.argmax(counts))  # the tiles' most frequent non-background argmax class
    np.testing.assert_allclose(ftu_predictor(model, batch_size=2)(images), probs[:, majority], atol=1e-5)
    np.testing.assert_allclose(ftu_predictor(model, rule="foreground")(images), 1 - probs[:, 0], atol=1e-5)


def test_segmentor_dice_applies_the_rule(demo_tiles: Path) -> None:
    torch.manual_seed(0)
    model = build_segmentor(Config.fromfile(str(DEMO)))
    rows = fold_rows(load_index(demo_tiles), 0, "val")
    majority = segmentor_dice(model, rows, demo_tiles)
    foreground = segmentor_dice(model, rows, demo_tiles, rule="foreground")
    # an untrained model spreads probability over 6 classes: the two rules threshold different maps
    assert majority["dice"] != foreground["dice"]
    assert set(majority["per_image"]) == set(rows["image_id"].astype(str))
    assert model.training  # mode restored


def test_fold_rows(demo_tiles: Path) -> None:
    index = load_index(demo_tiles)
    train, val = fold_rows(index, 0, "train"), fold_rows(index, 0, "val")
    assert set(train["fold"]) == set(index["fold"]) - {0}
    assert set(val["fold"]) == {0} and set(val["source"]) == {"original"}
    assert len(fold_rows(index, -1, "train")) == len(index)
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
def test_demo_trains_and_writes_checkpoint_folder(demo_run: Path) -> None:
    assert all((demo_run / name).is_file() for name in ARTIFACTS)
    losses = [loss for _, loss in loss_curve(demo_run / "work")]
    assert len(losses) == 6
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses
    config = CheckpointConfig.load(demo_run)
    assert (config.framework, config.task, config.weights) == ("torchscript", "multiclass", "model.ts")
    assert config.classes == list(CLASSES) and config.tile_size == 128
    assert config.mean == pytest.approx([0.485, 0.456, 0.406]) and config.std == pytest.approx([0.229, 0.224, 0.225])
    metrics = json.loads((demo_run / "metrics.json").read_text())
    assert 0.0 <= metrics["dice"] <= 1.0 and 0.0 <= metrics["mIoU"] <= 1.0
    assert metrics["iter"] in (15, 30) and metrics["per_image"]


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
    args = ["--config", str(DEMO), "--fold", "0", "--tiles", str(demo_tiles), "--work-dir", str(tmp_path)]
    run = tmp_path / DEMO.stem / "fold0"
    main([*args, "--cfg-options", *short])
    (run / "metrics.json").unlink()  # as if the process had died after its last checkpoint
    with pytest.raises(FileExistsError, match="--resume"):
        main([*args, "--cfg-options", *short])
    main([*args, "--resume", "--cfg-options", *short, "train_cfg.max_iters=20"])
    steps = [step for step, _ in loss_curve(run / "work")]
    assert steps == [5, 10, 15, 20]  # continued at iteration 10: none trained twice, none skipped
    assert (run / "work" / "last_checkpoint").read_text().strip().endswith("iter_20.pth")
    assert json.loads((run / "metrics.json").read_text())["iter"] in (5, 10, 15, 20)


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
