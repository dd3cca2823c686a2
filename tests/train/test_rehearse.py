"""The rehearsal's CI form: the smallest GPU config of each family through its command line at its real tile size,
train -> validate -> export -> predict -> kernels.build, and their two-family ensemble through the offline notebook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("mmcv", reason="mmcv is built from source by `make venv` (tools/build_mmcv_wheel.sh)")

from benchmarks import rehearse  # noqa: E402
from inference.checkpoint import CheckpointConfig  # noqa: E402


def test_every_gpu_recipe_is_rehearsed() -> None:
    stems = {stem for _, stem in rehearse.gpu_configs()}
    assert {"unet_effb7_768", "unet_effv2_l_768", "unet_coat_lite_medium_768", "unet_convnext_large_768",
            "unet_mit_b5_1024", "unetpp_effb7_1024", "unet_resnest269_768", "upernet_convnext-b_768",
            "upernet_convnext-xl_768", "segformer_mit-b3_1024", "segformer_mit-b4_960", "segformer_mit-b5_960"} <= stems
    assert not {s for s in stems if "cpu" in s or "demo" in s or s.startswith(("unet_r18_", "unet_mnv3_", "mrn_"))}
    assert set(rehearse.CI_CONFIGS) <= stems


@pytest.mark.slow
@pytest.mark.mmseg
def test_ci_rehearsal_of_one_config_per_family(tmp_path: Path) -> None:
    """The CI form (benchmarks/rehearse.py's docstring lists its reductions): about 4 minutes of one CPU core."""
    table = tmp_path / "rehearsal.md"
    status = rehearse.main(["--ci", "--work", str(tmp_path / "work"), "--markdown", str(table),
                            "--timeout-minutes", "10"])
    text = table.read_text()
    assert status == 0, text
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| fastai/") or line.startswith("| mmseg/")}
    assert set(rows) == {"fastai/unet_resnext50_512", "mmseg/segformer_mit-b3_1024"}
    for steps, seconds, cpu, _, validated, exported, predicted, kernel in rows.values():
        assert steps == "1" and float(seconds) > 0 and float(cpu) > 0
        assert validated.startswith("Dice ") and validated.endswith(" on 1")  # one validation image per fold
        assert exported in ("model.pth", "model.ts") and predicted.startswith("1/1 (160 px)")
        assert kernel.startswith("built; ensemble notebook: 1 rows")
    work = tmp_path / "work" / "ci"
    for stem in rehearse.CI_CONFIGS:
        metrics = json.loads((work / "outputs" / stem / "fold0" / "metrics.json").read_text())
        assert metrics["smoke"] is True and metrics["n"] == 1 and 0.0 <= metrics["dice"] <= 1.0
    # the SegFormer validated one window: whole-image 1024 px tiles (split 1), so config.json's reduce_k is 1
    assert CheckpointConfig.load(work / "outputs" / "segformer_mit-b3_1024" / "fold0").reduce_k == 1.0
    # and validated once: the runner's validation is the fold's metrics (not predicted again at the end)
    assert "kept from training (not predicted again)" in (work / "logs" / "segformer_mit-b3_1024" / "train.log").read_text()
    # a finished row leaves no resume checkpoints or per-config kernel build behind (they filled the disk)
    assert not (work / "outputs" / "segformer_mit-b3_1024" / "fold0" / "work").exists()
    assert not any((work / "dist" / stem).exists() for stem in rehearse.CI_CONFIGS)
    assert (work / "dist" / "ensemble" / "kernel").is_dir()


def test_a_command_over_the_memory_limit_is_stopped_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setattr(rehearse, "MEMORY_LIMIT_GIB", 0.2)
    grow = "import time; x = b\"\\x01\" * (400 * 2**20); time.sleep(30)"  # 400 MiB, every page written
    stage = rehearse.run([sys.executable, "-c", grow], tmp_path / "grow.log", timeout_s=60)
    assert stage.status is None and stage.seconds < 30
    assert stage.failure().startswith("memory: stopped at ") and "over the 0.2 GiB limit" in stage.failure()
    monkeypatch.setattr(rehearse, "MEMORY_LIMIT_GIB", None)
    assert rehearse.run([sys.executable, "-c", "pass"], tmp_path / "ok.log", timeout_s=60).ok


def test_a_resnest_whose_batchnorm_trains_is_rehearsed_at_batch_two() -> None:
    """timm's ResNeSt normalises pooled 1x1 features: BatchNorm in training mode fails on a batch of 1."""
    assert rehearse.rehearsal_batch("fastai", "unet_resnest101_256x4", 1) == 2
    assert rehearse.rehearsal_batch("fastai", "unet_resnest269_768", 1) == 1  # its encoder BN is frozen
    assert rehearse.rehearsal_batch("fastai", "unet_resnext50_512", 1) == 1
    assert rehearse.rehearsal_batch("mmseg", "segformer_mit-b3_1024", 1) == 1
    assert rehearse.rehearsal_batch("fastai", "unet_resnest101_256x4", 4) == 4


def test_each_fastai_recipe_trains_on_the_tile_set_of_its_sampler() -> None:
    """Split-tile configs on the 768 px split set (unet_resnest269_768 was rehearsed on the reduce-4 set), reduce-tile
    configs on the reduce-4 set, crop configs on the set with --scaled whole images."""
    class Named:
        def tiles(self, name: str) -> str:
            return name

    chosen = {stem: rehearse.tile_set(family, stem, Named()) for family, stem in rehearse.gpu_configs()
              if family == "fastai"}
    assert chosen["unet_resnest269_768"] == "tiles768" and chosen["unet_resnest101_256x4"] == "tiles256r4"
    assert chosen["unet_effb7_768"] == chosen["unet_mit_b5_1024"] == "tiles768"
