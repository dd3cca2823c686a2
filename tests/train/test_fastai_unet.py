"""fastai binary UNet trainer: configs build, schedules resume exactly, one fold trains, resumes and reloads."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from counting import count_calls
from fastai.callback.schedule import ParamScheduler
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from torch import nn

from data_prep.tileset import load_index
from inference.checkpoint import CheckpointConfig
from inference.engine.models import build_model as inference_model
from inference.predict import main as predict_main
from inference.score import score
from inference.tables import load_submission, load_train
from train import fastai_unet
from train.configs.fastai.base import CONFIG_DIR, GROUPS, FastaiConfig, experiment_names, experiment_paths, load_config
from train.fastai_data import split_rows
from train.fastai_unet import ResumeCheckpoint, schedule, train
from train.losses import SegmentationLoss
from train.models import build_model, fixed_input_size

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = experiment_names()
TINY = dict(tile_size=64, bs=4, batches_per_epoch=4, epochs=2, num_workers=0, minutes=None)


def tiny_config(**changes) -> FastaiConfig:
    """The demo config shrunk to seconds per epoch on CPU."""
    return replace(load_config("unet_r18_demo")[1], **{**TINY, **changes})


def test_required_experiments_exist() -> None:
    assert {"unet_effb7_768", "unet_resnest269_768", "unet_resnest101_256x4", "unet_r18_demo"} <= set(EXPERIMENTS)


def test_experiments_sit_in_groups_under_unique_names() -> None:
    """A bare name (--config, config.json's "name", benchmarks' entries) must find exactly one file."""
    files = [p for p in CONFIG_DIR.rglob("*.py") if not p.stem.startswith("_") and p.stem != "base"]
    assert len({p.stem for p in files}) == len(files), "two experiment files share a stem"
    assert {p.parent.name for p in files} == set(GROUPS), "an experiment outside recipes/, cpu/, ablations/"
    assert sorted(p.stem for p in files) == EXPERIMENTS == sorted(n for g in GROUPS for n in experiment_names(g))
    assert {"unet_effb7_768", "unet_resnext50_512"} <= set(experiment_names("recipes"))
    assert {"unet_r18_cpu", "unet_r18_demo"} <= set(experiment_names("cpu"))
    assert {"unet_mnv3_steps", "unet_r18_cpu_stain"} <= set(experiment_names("ablations"))
    with pytest.raises(ValueError, match="unknown experiment group"):
        experiment_names("gpu")
    with pytest.raises(FileNotFoundError, match="cpu/unet_r18_demo.py"):  # a path from before the groups
        load_config("train/configs/fastai/unet_r18_demo.py")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_config_builds_its_model(name: str) -> None:
    stem, cfg = load_config(experiment_paths()[name])
    assert stem == name
    # smp/timm build the real architecture (a typo in an encoder name fails) without memory on the meta device;
    # smp's MiT calls .item() on its drop-path schedule, which meta tensors refuse: MiT builds on CPU (mit_b5: 2 s)
    device = "cpu" if cfg.encoder.startswith("mit_") else "meta"
    with torch.device(device):
        model = build_model(cfg, weights=False)
    head = model.head if cfg.arch == "MRN" else model.segmentation_head[0]
    assert head.out_channels == 1
    assert sum(p.numel() for p in model.parameters()) > 1_000_000


TRANSFORMER_AND_MODERN = ["unet_mit_b5_1024", "unet_convnext_large_768", "unet_coat_lite_medium_768",
                          "unet_effv2_l_768", "unetpp_effb7_1024", "unet_mit_b0_cpu"]


def test_winners_encoder_configs_exist() -> None:
    assert set(TRANSFORMER_AND_MODERN) <= set(EXPERIMENTS)
    sizes = {load_config(name)[1].tile_size for name in TRANSFORMER_AND_MODERN[:-1]}
    assert sizes == {768, 1024}  # the 2nd and 3rd places' input sizes


@pytest.mark.parametrize("encoder", ["mit_b0", "tu-coat_lite_medium"])
def test_transformer_encoders_forward_at_a_small_tile(encoder: str) -> None:
    """MiT takes any multiple of 32; CoaT only the size it was built at (the tile size), then exports TorchScript."""
    cfg = replace(load_config("unet_r18_cpu")[1], encoder=encoder, tile_size=64, decoder_norm="groupnorm")
    model = build_model(cfg, weights=False).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 64, 64)
    assert fixed_input_size(encoder) == (encoder == "tu-coat_lite_medium")  # CoaT folds are written as model.ts


def test_demo_config_forward_keeps_shape() -> None:
    cfg = load_config("unet_r18_demo")[1]
    assert cfg.encoder_weights is None
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, cfg.tile_size, cfg.tile_size))
    assert out.shape == (2, 1, cfg.tile_size, cfg.tile_size)


def test_config_errors_are_actionable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        FastaiConfig(tile_size=100)
    with pytest.raises(ValueError, match="unknown config field"):
        FastaiConfig().override(epoch=3)
    with pytest.raises(FileNotFoundError, match="unet_r18_demo"):
        load_config("no_such_experiment")
    assert FastaiConfig().override(epochs=None, bs=3).bs == 3


def test_encoder_weights_from_local_file_load_offline(tmp_path: Path) -> None:
    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)  # a plain timm classifier checkpoint, head included
    model = build_model(FastaiConfig(encoder="tu-resnet18", encoder_weights=str(path), tile_size=64))
    assert torch.equal(model.encoder.model.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.encoder.model.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(ValueError, match="does not fit encoder"):
        build_model(FastaiConfig(encoder="tu-resnet18", encoder_weights=str(tmp_path / "resnet34.pth")))
    with pytest.raises(FileNotFoundError, match="not found"):
        build_model(FastaiConfig(encoder="tu-resnet18", encoder_weights=str(tmp_path / "missing.pth")))


@pytest.mark.parametrize("name", ["bce_dice", "bce_lovasz", "lovasz"])
def test_losses_reward_the_right_answer(name: str) -> None:
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:10, 4:10] = 1.0
    loss = SegmentationLoss(name)
    assert loss(10 * (2 * target - 1), target) < loss(torch.zeros_like(target), target)


def _toy_learner() -> Learner:
    items = [(torch.randn(2), torch.randn(1)) for _ in range(16)]
    dls = DataLoaders(DataLoader(items, bs=4, shuffle=True), DataLoader(items, bs=4))
    return Learner(dls, nn.Linear(2, 1), loss_func=nn.MSELoss())


@pytest.mark.parametrize("kind", ["one_cycle", "flat_cos"])
def test_schedule_matches_fastai_and_resumes_on_its_tail(kind: str) -> None:
    cfg = FastaiConfig(epochs=4, lr=1e-2, schedule=kind, tile_size=64)
    reference = _toy_learner()
    fit = reference.fit_one_cycle if kind == "one_cycle" else reference.fit_flat_cos
    fit(4, 1e-2)
    ours = _toy_learner()
    ours.fit(4, cbs=ParamScheduler(schedule(cfg, ours.moms)))
    resumed = _toy_learner()
    resumed.fit(2, cbs=ParamScheduler(schedule(cfg, resumed.moms, start_epoch=2)))
    for hp in reference.recorder.hps:
        full = np.array(reference.recorder.hps[hp])
        assert np.allclose(ours.recorder.hps[hp], full)
        assert np.allclose(resumed.recorder.hps[hp], full[len(full) // 2 :])


def test_split_rows_keeps_folds_apart(demo_tiles: Path) -> None:
    index = load_index(demo_tiles)
    cfg = tiny_config(sampler="tiles")
    train_rows, valid_rows = split_rows(index, 0, cfg)
    assert (train_rows["fold"] != 0).all() and (valid_rows["fold"] == 0).all()
    assert set(valid_rows["source"]) == {"original"}
    assert len(train_rows) + len(valid_rows) == len(index[index["source"] == "original"])
    only_split2, _ = split_rows(index, 0, replace(cfg, train_splits=(2,)))
    assert set(only_split2["split"]) == {2}
    everything, none = split_rows(index, -1, cfg)
    assert len(everything) == len(index[index["source"] != "scaled"]) and none.empty
    with pytest.raises(ValueError, match="fold 9 is not in the tile set"):
        split_rows(index, 9, cfg)
    with pytest.raises(ValueError, match="no training tiles"):
        split_rows(index, 0, replace(cfg, train_splits=(), train_reduces=(8,)))


def test_crop_sampler_rows_are_whole_images_at_the_pixel_size(demo_tiles: Path) -> None:
    index = load_index(demo_tiles)
    train_rows, valid_rows = split_rows(index, 1, tiny_config())
    assert set(train_rows["source"]) == set(valid_rows["source"]) == {"scaled"}
    assert (train_rows["fold"] != 1).all() and (valid_rows["fold"] == 1).all()
    assert len(train_rows) + len(valid_rows) == index["image_id"].nunique()
    assert np.allclose(train_rows["tile_pixel_size"], 0.8)
    with pytest.raises(ValueError, match=r"--scaled 0.5"):
        split_rows(index, 1, tiny_config(pixel_size=0.5))


def _assert_complete(folder: Path, cfg: FastaiConfig, n_valid: int) -> dict:
    """The checkpoint folder holds everything inference and threshold tuning read, and no resume leftovers."""
    config = CheckpointConfig.load(folder)
    assert (config.framework, config.task, config.classes, config.tile_size) == ("smp", "binary", ["ftu"], 64)
    assert config.pixel_size == cfg.pixel_size
    assert config.data_sources == ["HPA"]  # demo train images are HPA: AdaBN's "unseen" mode adapts Hubmap only
    assert config.reduce_k == pytest.approx(250 / 64, rel=0.05)  # reduce mode: 500 px demo images -> 250 px, as trained
    assert config.train["epochs"] == cfg.epochs
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0.0 <= metrics["dice"] <= 1.0 and metrics["n"] == n_valid
    history = pd.read_csv(folder / "history.csv")
    assert list(history["epoch"]) == list(range(cfg.epochs))
    assert {"train_loss", "valid_loss", "dice"} <= set(history.columns)
    oof = pd.read_csv(folder / "oof" / "index.csv")
    assert len(oof) == n_valid
    for row in oof.itertuples():
        prob = np.load(folder / "oof" / row.prob_path)
        assert prob.dtype == np.float16 and prob.shape == (row.height, row.width)
        assert 0.0 <= float(prob.min()) and float(prob.max()) <= 1.0
    assert not (folder / "checkpoints").exists()
    return metrics


def _assert_validation_is_the_submission_path(
    data: Path, folder: Path, valid_rows: pd.DataFrame, metrics: dict, tmp_path: Path
) -> None:
    """inference.predict --split train on the checkpoint gives the Dice the trainer recorded, image by image."""
    submission = tmp_path / "train_pred.csv"
    assert predict_main(["--data-dir", str(data), "--split", "train", "--models", str(folder),
                         "--out", str(submission)]) == 0
    truth = load_train(data / "train.csv")
    truth = truth[truth["id"].isin(valid_rows["image_id"].astype(int))]
    predicted = score(load_submission(submission).query("id in @truth.id"), truth)
    assert len(predicted["per_image"]) == valid_rows["image_id"].nunique()
    for image_id, dice in predicted["per_image"].items():
        assert dice == pytest.approx(metrics["per_image"][str(image_id)], abs=1e-3)
    assert predicted["dice"] == pytest.approx(metrics["dice"], abs=1e-3)


@pytest.mark.slow
def test_short_training_writes_a_complete_checkpoint_that_reloads(
    demo_data: Path, demo_tiles: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also: the fold is validated once per epoch and not again at the end (the best epoch's kept validation is the
    fold's metrics.json and oof/; the submission-path check below compares them with inference.predict)."""
    from train import fastai_callbacks

    validations = count_calls(monkeypatch, "kernel_validation", fastai_callbacks)
    cfg = tiny_config(augment="flips", batches_per_epoch=8)  # 16 steps: enough for the loss to fall
    metrics = train(cfg, "tiny", 0, demo_tiles, tmp_path)
    folder = tmp_path / "tiny" / "fold0"
    out = capsys.readouterr().out
    assert "validation Dice of the submission path" in out and "kidney" in out and "HPA" in out
    assert len(validations) == cfg.epochs and "kept from training (not predicted again)" in out
    _, valid_rows = split_rows(load_index(demo_tiles), 0, cfg)
    n_valid = valid_rows["image_id"].nunique()
    assert _assert_complete(folder, cfg, n_valid)["dice"] == metrics["dice"]
    assert set(metrics["per_organ"]) == set(valid_rows["organ"]) and set(metrics["per_data_source"]) == {"HPA"}
    history = pd.read_csv(folder / "history.csv")
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]

    _assert_validation_is_the_submission_path(demo_data, folder, valid_rows, metrics, tmp_path)

    assert train(cfg, "tiny", 0, demo_tiles, tmp_path) == metrics
    assert "already trained" in capsys.readouterr().out


@pytest.mark.slow
def test_time_budget_stops_on_time_and_writes_a_finished_folder(
    demo_tiles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import train.fastai_unet as trainer
    from train.fastai_callbacks import TrainingClock

    ticks = iter(range(10**6))  # a fake clock: every reading is one second after the last
    monkeypatch.setattr(trainer, "TrainingClock", functools.partial(TrainingClock, clock=lambda: float(next(ticks))))
    cfg = tiny_config(minutes=0.1, epochs=2)  # 6 s of training in two 3 s epochs: 3 one-second batches each
    metrics = train(cfg, "timed", -1, demo_tiles, tmp_path)
    folder = tmp_path / "timed" / "fold-1"
    assert metrics["seconds_trained"] == 6.0  # epoch 0 ends after the batch that reaches 3 s, epoch 1 at 6 s
    assert metrics["steps"] == 6  # three one-second batches per epoch: the clock is read once per batch
    out = capsys.readouterr().out
    assert "[1/3 " in out and "[1/2500000" not in out  # from its first batch the bar shows what the time holds
    assert (folder / "model.pth").is_file() and CheckpointConfig.load(folder).train["minutes"] == 0.1
    history = pd.read_csv(folder / "history.csv")
    assert list(history["epoch"]) == [0, 1] and history["train_loss"].notna().all()


class Interrupted(RuntimeError):
    """Stands in for a killed job."""


@pytest.mark.slow
def test_rerun_resumes_after_the_last_saved_epoch(demo_tiles: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    cfg = tiny_config()
    folder = tmp_path / "tiny" / "fold0"
    save_epoch = ResumeCheckpoint.after_epoch

    def save_then_die(self: ResumeCheckpoint) -> None:
        save_epoch(self)
        raise Interrupted("killed after saving epoch 0")

    monkeypatch.setattr(ResumeCheckpoint, "after_epoch", save_then_die)
    with pytest.raises(Interrupted):
        train(cfg, "tiny", 0, demo_tiles, tmp_path)
    monkeypatch.setattr(ResumeCheckpoint, "after_epoch", save_epoch)
    state = json.loads((folder / "checkpoints" / "state.json").read_text())
    assert state["epochs_done"] == 1 and state["best"] is not None
    assert (folder / "checkpoints" / "last.pth").is_file() and not (folder / "metrics.json").exists()

    with pytest.raises(ValueError, match="unfinished run with other settings"):
        train(replace(cfg, lr=1e-2), "tiny", 0, demo_tiles, tmp_path)
    train(cfg, "tiny", 0, demo_tiles, tmp_path)
    assert "resuming tiny fold 0 after epoch 1 of 2" in capsys.readouterr().out
    _, valid_rows = split_rows(load_index(demo_tiles), 0, cfg)
    _assert_complete(folder, cfg, valid_rows["image_id"].nunique())


@pytest.mark.slow
def test_fold_minus_one_trains_on_everything(demo_tiles: Path, tmp_path: Path) -> None:
    metrics = train(tiny_config(epochs=1, batches_per_epoch=2), "tiny", -1, demo_tiles, tmp_path)
    folder = tmp_path / "tiny" / "fold-1"
    assert metrics["dice"] is None and metrics["n_train_rows"] == load_index(demo_tiles)["image_id"].nunique()
    assert (folder / "model.pth").is_file() and CheckpointConfig.load(folder).fold == -1
    assert not (folder / "oof").exists()


@pytest.mark.slow
def test_cli_under_torchrun_with_two_cpu_processes(demo_tiles: Path, tmp_path: Path) -> None:
    config = tmp_path / "tiny_ddp.py"
    config.write_text(
        "from dataclasses import replace\n\n"
        "from train.configs.fastai.cpu.unet_r18_demo import config as demo\n\n"
        "config = replace(demo, tile_size=64, bs=4, num_workers=0, minutes=0.05)  # ranks share rank 0 clock\n"
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "train.fastai_unet", "--config", str(config), "--fold", "0", "--tiles", str(demo_tiles)]
    command += ["--out", str(tmp_path / "out"), "--epochs", "1", "--bs", "4", "--encoder-weights", "none"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "distributed training: 2 processes, backend gloo" in done.stdout
    folder = tmp_path / "out" / "tiny_ddp" / "fold0"
    assert json.loads((folder / "metrics.json").read_text())["dice"] is not None
    assert CheckpointConfig.load(folder).train["bs"] == 4


def test_cli_flags_override_the_config(monkeypatch, tmp_path: Path) -> None:
    seen = {}
    monkeypatch.setattr(fastai_unet, "train", lambda cfg, name, fold, tiles, out, data_dir=None, **run: seen.update(
        cfg=cfg, name=name, run=run))
    with pytest.raises(SystemExit) as exit_info:  # not a tile set: error: ... exit 2, before anything is built
        fastai_unet.main(["--config", "unet_effb7_768", "--fold", "1", "--tiles", str(tmp_path)])
    assert exit_info.value.code == 2 and not seen
    (tmp_path / "index.csv").write_text("tile_id\n")
    fastai_unet.main(["--config", "unet_effb7_768", "--fold", "1", "--tiles", str(tmp_path), "--batch-size", "5"])
    assert seen["cfg"].bs == 5 and seen["run"] == dict(resume=True, overwrite=False, max_steps=None)
    fastai_unet.main(["--config", "unet_effb7_768", "--fold", "1", "--tiles", str(tmp_path), "--no-resume",
                      "--max-steps", "2", "--encoder-weights", "imagenet"])
    assert seen["run"] == dict(resume=False, overwrite=False, max_steps=2) and seen["cfg"].encoder_weights == "imagenet"
    fastai_unet.main(  # --bs: the old spelling, hidden
        ["--config", "unet_effb7_768", "--fold", "1", "--tiles", str(tmp_path), "--epochs", "3", "--bs", "2"]
        + ["--lr", "0.01", "--encoder-weights", "none"]
    )
    cfg = seen["cfg"]
    assert (seen["name"], cfg.epochs, cfg.bs, cfg.lr, cfg.encoder_weights) == ("unet_effb7_768", 3, 2, 0.01, None)
    assert cfg.encoder == "tu-tf_efficientnet_b7"
    fastai_unet.main(["--config", "unet_mit_b5_1024", "--fold", "-1", "--tiles", str(tmp_path), "--average-by", "last"])
    assert (seen["cfg"].average_k, seen["cfg"].average_by) == (3, "last")
    fastai_unet.main(["--config", "unet_mit_b5_1024", "--fold", "0", "--tiles", str(tmp_path), "--average-k", "0"])
    assert seen["cfg"].average_k == 0


def test_small_batch_norms_load_in_inference_and_freeze_only_the_encoder(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from train.fastai_callbacks import FreezeEncoderBN

    cfg = tiny_config(decoder_norm="groupnorm", freeze_encoder_bn=True)
    model = build_model(cfg)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.decoder.modules())
    torch.save(model.state_dict(), tmp_path / "model.pth")
    CheckpointConfig(name="ln", fold=0, framework="smp", task="binary", classes=["ftu"], tile_size=64,
                     encoder=cfg.encoder, decoder_norm="groupnorm", pixel_size=0.8).save(tmp_path)
    reloaded = inference_model(CheckpointConfig.load(tmp_path), tmp_path, torch.device("cpu"))
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(reloaded(x), model.eval()(x))

    model.train()
    callback = FreezeEncoderBN()
    callback.learn = SimpleNamespace(model=model)
    callback.before_train()
    encoder_bn = [m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert encoder_bn and not any(m.training for m in encoder_bn)
    assert all(m.training for m in model.decoder.modules())


@pytest.mark.slow
def test_mrn_trains_on_context_crops_and_exports_torchscript(demo_data: Path, demo_tiles: Path, tmp_path: Path) -> None:
    cfg = tiny_config(arch="MRN", context=2, epochs=1)
    metrics = train(cfg, "mrn", 0, demo_tiles, tmp_path)
    folder = tmp_path / "mrn" / "fold0"
    config = CheckpointConfig.load(folder)
    assert (config.framework, config.weights, config.context, config.arch) == ("torchscript", "model.ts", 2, "MRN")
    assert (folder / "model.ts").is_file() and not (folder / "model.pth").exists()
    _, valid_rows = split_rows(load_index(demo_tiles), 0, cfg)
    _assert_validation_is_the_submission_path(demo_data, folder, valid_rows, metrics, tmp_path)
    with pytest.raises(ValueError, match="MRN needs context"):
        tiny_config(arch="MRN")


@pytest.mark.slow
def test_max_steps_is_a_smoke_run_marked_in_the_folder(demo_tiles: Path, tmp_path: Path, capsys) -> None:
    """Also trains with gradient checkpointing (the rehearsal's setting for the 1024 px recipes), recorded."""
    cfg = tiny_config(grad_accum=2, epochs=5, grad_checkpointing=True)
    metrics = train(cfg, "smoke", 0, demo_tiles, tmp_path, max_steps=2)
    folder = tmp_path / "smoke" / "fold0"
    assert "blocks recompute their activations" in capsys.readouterr().out
    assert CheckpointConfig.load(folder).train["grad_checkpointing"] is True
    assert metrics["smoke"] is True and metrics["max_steps"] == 2 and metrics["epochs"] == 1
    assert metrics["steps"] == 4  # 2 optimizer steps of 2 accumulated batches, then one validation
    assert metrics["dice"] is not None and json.loads((folder / "metrics.json").read_text())["smoke"] is True
    assert CheckpointConfig.load(folder).train["smoke"] is True


def test_grad_checkpointing_flag_overrides_the_config(demo_tiles: Path, tmp_path: Path, monkeypatch) -> None:
    from train import fastai_unet

    seen = []
    monkeypatch.setattr(fastai_unet, "train", lambda cfg, *args, **kwargs: seen.append(cfg.grad_checkpointing))
    common = ["--config", "unet_mit_b5_1024", "--fold", "0", "--tiles", str(demo_tiles), "--out", str(tmp_path)]
    fastai_unet.main(common)
    fastai_unet.main([*common, "--grad-checkpointing"])
    assert seen == [False, True]


def test_only_the_best_finished_validation_is_kept_and_reused_when_it_is_the_final_weights(tmp_path: Path) -> None:
    """KernelDice's kept validations: the highest Dice (earliest epoch on a tie) stays; the trainer reuses it only for
    the best epoch's own weights whose Dice history.csv recorded, else validates again."""
    from train.fastai_callbacks import CHECKPOINTS, VALIDATIONS, keep_best_validation, kept_validation
    from train.fastai_unet import _kept_best_validation
    from train.validation import validate_into

    keep = tmp_path / CHECKPOINTS / VALIDATIONS
    for epoch, dice in [(0, 0.2), (1, 0.5), (2, 0.5), (3, 0.1)]:
        validate_into(kept_validation(keep, epoch), lambda on_image, d=dice: {"dice": d, "n": 1}, 64)
    (keep / "epoch_4" / "oof").mkdir(parents=True)  # a validation killed before its result.json
    keep_best_validation(keep)
    assert [p.name for p in keep.iterdir()] == ["epoch_1"]
    assert (keep / "epoch_1" / "oof" / "index.csv").is_file()

    history = pd.DataFrame({"epoch": [0, 1, 2], "dice": [0.2, 0.5, 0.5]})
    assert _kept_best_validation(tmp_path, history, 1, None)[0]["dice"] == 0.5
    assert _kept_best_validation(tmp_path, history, 1, {"steps": [1]}) is not None  # a mean of the best epoch alone
    assert _kept_best_validation(tmp_path, history, 1, {"steps": [1, 2]}) is None  # weights no validation saw
    stale = pd.DataFrame({"epoch": [0, 1], "dice": [0.2, 0.45]})  # epoch 1 retrained after a kill: another result
    assert _kept_best_validation(tmp_path, stale, 1, None) is None
    assert _kept_best_validation(tmp_path, history, None, None) is None
