"""Session fixtures shared by the test suite: a small demo dataset, its folds, a tile set and a SegFormer run."""

from __future__ import annotations

import os
from pathlib import Path

# albumentations checks PyPI for a newer release on import; tests run offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest

SHARED_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "hubmap2022"


@pytest.fixture(scope="session")
def real_fixtures() -> Path:
    """Real competition files from ../shared; skipped where that folder is absent."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"real competition fixtures not found at {SHARED_FIXTURES} (../shared is absent)")
    return SHARED_FIXTURES


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo dataset in competition layout: 10 train images (2 per organ), 6 test images."""
    from data_prep.make_demo import make_demo

    return make_demo(tmp_path_factory.mktemp("demo_data"), seed=0, n_train=10, n_test=6)


@pytest.fixture(scope="session")
def demo_folds(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Organ-stratified 5-fold split of the demo train ids (kept outside the dataset folder)."""
    from data_prep.make_folds import ids_from_train_csv, make_folds

    path = tmp_path_factory.mktemp("demo_folds") / "folds.csv"
    make_folds(ids_from_train_csv(demo_data / "train.csv"), n_folds=5, seed=42).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def demo_tiles(demo_data: Path, demo_folds: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 128 px tile set (whole image and 2x2 split) of the demo train images, plus whole images at 0.8 um/px."""
    from data_prep.tiles import build_tiles

    out = tmp_path_factory.mktemp("demo_tiles")
    build_tiles(demo_data, demo_folds, out, size=128, splits=(1, 2), workers=1, scaled=(0.8,))
    return out


@pytest.fixture(scope="session")
def segformer_run(demo_tiles: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/configs/mmseg/segformer_mit-b0_cpu.py trained SEGFORMER_ITERS iterations on the demo tiles (fold 0,
    validations at SEGFORMER_VAL_INTERVAL and at the end, the model the average of both), exported: the fold folder
    (used by the trainer's tests and the offline-notebook test). An iteration cap, not a time budget: the same
    iterations on a loaded and an idle machine (train.mmseg_train rescales the LR schedule to max_iters)."""
    pytest.importorskip("mmcv", reason="mmcv is built from source by `make venv` (tools/build_mmcv_wheel.sh)")
    from checkpoints import SEGFORMER_ITERS, SEGFORMER_SIDE, SEGFORMER_VAL_INTERVAL, segformer_tile_options

    from train.mmseg_train import main

    config = Path(__file__).resolve().parents[1] / "train" / "configs" / "mmseg" / "segformer_mit-b0_cpu.py"
    out = tmp_path_factory.mktemp("segformer_outputs")
    options = [
        *segformer_tile_options(SEGFORMER_SIDE),
        "train_dataloader.num_workers=0",
        "train_dataloader.persistent_workers=False",
        "average_k=2",
        f"train_cfg.max_iters={SEGFORMER_ITERS}",
        f"train_cfg.val_interval={SEGFORMER_VAL_INTERVAL}",
        f"default_hooks.checkpoint.interval={SEGFORMER_VAL_INTERVAL}",
    ]
    args = ["--config", str(config), "--fold", "0", "--tiles", str(demo_tiles), "--work-dir", str(out)]
    main([*args, "--cfg-options", *options])
    return out / config.stem / "fold0"
