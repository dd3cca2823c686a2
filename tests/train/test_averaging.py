"""Checkpoint weight averaging: the mean of state dicts, the snapshot pool's ranking, and the fastai trainer
writing the averaged model with its own validation Dice."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from inference.checkpoint import CheckpointConfig
from inference.engine.models import build_model as inference_model
from train.averaging import SnapshotPool, average_state_dicts
from train.configs.fastai.base import FastaiConfig, load_config
from train.fastai_unet import train


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_average_of_two_state_dicts_is_their_mean() -> None:
    torch.manual_seed(0)
    a, b = _net(), _net()
    with torch.no_grad():  # distinct BN statistics, as two epochs would have
        a[1].running_mean.fill_(1.0), b[1].running_mean.fill_(3.0)
        a[1].num_batches_tracked.fill_(10), b[1].num_batches_tracked.fill_(20)
    mean = average_state_dicts([a.state_dict(), b.state_dict()])
    for key in ("0.weight", "0.bias", "1.weight", "1.running_var"):
        assert torch.allclose(mean[key], (a.state_dict()[key] + b.state_dict()[key]) / 2), key
    assert torch.equal(mean["1.running_mean"], torch.full((4,), 2.0))
    assert int(mean["1.num_batches_tracked"]) == 20 and mean["1.num_batches_tracked"].dtype == torch.long
    _net().load_state_dict(mean)  # loadable: same keys, shapes and dtypes
    with pytest.raises(ValueError, match="other keys"):
        average_state_dicts([a.state_dict(), nn.Conv2d(3, 4, 3).state_dict()])


def test_pool_keeps_the_k_best_or_the_k_last(tmp_path: Path) -> None:
    states = {step: {"w": torch.full((2,), float(step))} for step in range(5)}
    scores = [0.1, 0.5, 0.3, 0.4, 0.2]
    best = SnapshotPool(tmp_path / "best", k=2, rule="dice")
    for step, score in enumerate(scores):
        best.offer(step, states[step], score)
    assert best.steps == [1, 3] and len(list((tmp_path / "best").glob("*.pth"))) == 2
    assert torch.equal(best.average()["w"], torch.full((2,), 2.0))
    # a restarted run sees the same pool
    assert SnapshotPool(tmp_path / "best", k=2, rule="dice").steps == [1, 3]
    last = SnapshotPool(tmp_path / "last", k=3, rule="last")
    for step in range(5):
        last.offer(step, states[step])
    assert last.steps == [2, 3, 4] and torch.equal(last.average()["w"], torch.full((2,), 3.0))
    assert last.record() == dict(k=3, by="last", steps=[2, 3, 4], scores=[None, None, None])
    with pytest.raises(ValueError, match="average_by"):
        FastaiConfig(average_k=2, average_by="mean")


@pytest.mark.slow
def test_fastai_trainer_writes_the_averaged_model_and_its_dice(demo_data: Path, demo_tiles: Path, tmp_path: Path) -> None:
    cfg = replace(
        load_config("unet_r18_demo")[1],
        tile_size=64, bs=4, batches_per_epoch=4, epochs=3, num_workers=0, minutes=None, average_k=2,
    )
    metrics = train(cfg, "averaged", 0, demo_tiles, tmp_path)
    folder = tmp_path / "averaged" / "fold0"
    assert metrics["averaged"]["k"] == 2 and len(metrics["averaged"]["steps"]) == 2
    assert set(metrics["averaged"]["steps"]) <= {0, 1, 2}
    assert 0.0 <= metrics["best_epoch_dice"] <= 1.0 and 0.0 <= metrics["dice"] <= 1.0
    config = CheckpointConfig.load(folder)
    assert config.train["average_k"] == 2 and config.train["average_by"] == "dice"
    model = inference_model(config, folder, torch.device("cpu"))  # the averaged weights load where the kernel loads them
    assert isinstance(model, nn.Module)
    assert not (folder / "checkpoints").exists()
    # the recorded Dice is that of the averaged model: inference.predict on the folder reproduces it
    from inference.predict import main as predict_main
    from inference.score import score
    from inference.tables import load_submission, load_train

    data = demo_data
    out = tmp_path / "pred.csv"
    assert predict_main(["--data-dir", str(data), "--split", "train", "--models", str(folder), "--out", str(out)]) == 0
    ids = {int(i) for i in metrics["per_image"]}
    truth = load_train(data / "train.csv")
    truth, submission = truth[truth["id"].isin(ids)], load_submission(out)
    assert score(submission[submission["id"].isin(ids)], truth)["dice"] == pytest.approx(metrics["dice"], abs=1e-3)
