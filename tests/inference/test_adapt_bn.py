"""AdaBN (--adapt-bn): encoder BatchNorm statistics per data source, for smp, scripted and traced models."""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from checkpoints import make_smp_checkpoint, make_torchscript_checkpoint
from torch import nn

from inference import predict
from inference.checkpoint import CheckpointConfig
from inference.engine.adapt_bn import BatchNormAdaptation, adapt_batchnorm, encoder_batchnorms
from inference.engine.ensemble import Member
from inference.engine.predictor import Predictor, load_predictor


class EncoderDecoder(nn.Module):
    """A BatchNorm in the encoder, another in the decoder: only the first may be adapted."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.decoder = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _member(module: nn.Module) -> Member:
    cfg = CheckpointConfig(name="ed", fold=0, framework="torchscript", task="binary", classes=["ftu"], tile_size=16,
                           weights="model.ts", mean=[0.0, 0.0, 0.0], std=[1 / 255] * 3)  # x = pixel value
    return Member(Predictor(cfg, module.eval(), batch_size=4))


def _batches(member: Member, seed: int = 0) -> list[tuple[Member, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    return [(member, torch.from_numpy(rng.integers(100, 200, (4, 3, 16, 16), dtype=np.uint8))) for _ in range(3)]


def _expected(module: nn.Module, batches: list[tuple[Member, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over batches of the encoder BatchNorm's input batch mean and unbiased variance, computed directly."""
    conv = module.encoder[0]
    means, variances = [], []
    with torch.no_grad():
        for _, batch in batches:
            features = conv(batch.float())
            means.append(features.mean((0, 2, 3)))
            variances.append(features.var((0, 2, 3), unbiased=True))
    return torch.stack(means).mean(0), torch.stack(variances).mean(0)


@pytest.mark.parametrize("kind", ["eager", "scripted"])
def test_encoder_statistics_are_the_mean_batch_statistics(kind: str) -> None:
    torch.manual_seed(0)
    module = EncoderDecoder().eval()
    reference = copy.deepcopy(module)
    if kind == "scripted":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.script(module)
    member = _member(module)
    assert [name for name, _ in encoder_batchnorms(member.predictor.model)] == ["encoder.1"]
    decoder_before = module.decoder[1].running_mean.clone()
    trained = module.encoder[1].running_mean.clone()
    adaptation = BatchNormAdaptation([member])
    batches = _batches(member)
    adaptation.fit("Hubmap", batches)
    assert torch.equal(module.encoder[1].running_mean, trained)  # fit restores; use() swaps in
    adaptation.use("Hubmap", [member])
    mean, var = _expected(reference, batches)
    assert torch.allclose(module.encoder[1].running_mean, mean, rtol=1e-4, atol=1e-3)
    assert torch.allclose(module.encoder[1].running_var, var, rtol=1e-3, atol=1e-2)
    assert torch.equal(module.decoder[1].running_mean, decoder_before)  # the decoder's BatchNorm is left alone
    assert not module.encoder[1].training
    adaptation.use("HPA", [member])  # a source never fitted: the trained statistics
    assert torch.equal(module.encoder[1].running_mean, trained)


def test_traced_models_are_left_as_trained_with_a_warning(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    module = EncoderDecoder().eval()
    with warnings.catch_warnings():  # saved and loaded, as train.export writes model.ts and the kernel reads it
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.trace(module, torch.randn(2, 3, 16, 16)), str(tmp_path / "model.ts"))
        traced = torch.jit.load(str(tmp_path / "model.ts"))
    member = _member(traced)
    bn = dict(traced.named_modules())["encoder.1"]
    before = bn.running_mean.clone()
    adaptation = BatchNormAdaptation([member])
    with caplog.at_level(logging.WARNING):
        adaptation.fit("Hubmap", _batches(member))
    assert "traced TorchScript" in caplog.text and adaptation.states["Hubmap"] == {}
    adaptation.use("Hubmap", [member])
    assert torch.equal(bn.running_mean, before)


def test_adapt_batchnorm_on_demo_images_per_source(demo_data: Path, tmp_path: Path) -> None:
    folder = make_smp_checkpoint(tmp_path / "unet" / "fold0", tile=64)
    member = Member(load_predictor(folder))
    table = pd.read_csv(demo_data / "test.csv")
    adaptation = adapt_batchnorm(table, demo_data / "test_images", [member], windows=8, max_images=2,
                                 grouping="source")
    assert sorted(adaptation.states) == ["HPA", "Hubmap"]
    layers = encoder_batchnorms(member.predictor.model)
    decoder = [m for n, m in member.predictor.model.named_modules()
               if n.startswith("decoder.") and isinstance(m, nn.BatchNorm2d)]
    assert layers and decoder
    trained = layers[0][1].running_var.clone()
    decoder_trained = decoder[0].running_var.clone()
    adaptation.use("Hubmap", [member])
    hubmap = layers[0][1].running_var.clone()
    adaptation.use("HPA", [member])
    assert not torch.equal(hubmap, trained) and not torch.equal(layers[0][1].running_var, hubmap)
    assert torch.equal(decoder[0].running_var, decoder_trained)
    adaptation.restore()
    assert torch.equal(layers[0][1].running_var, trained)


@pytest.mark.slow
def test_predict_adapt_bn_end_to_end(demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    smp_run = make_smp_checkpoint(tmp_path / "unet" / "fold0", tile=64)
    tiny = make_torchscript_checkpoint(tmp_path / "tiny" / "fold0", tile=64)  # traced, no BatchNorm: left alone
    base = ["--data-dir", str(demo_data), "--models", str(smp_run), str(tiny), "--save-probs"]
    assert predict.main([*base, str(tmp_path / "plain"), "--out", str(tmp_path / "plain.csv")]) == 0
    assert predict.main([*base, str(tmp_path / "adapted"), "--out", str(tmp_path / "adapted.csv"), "--adapt-bn",
                         "--adapt-bn-windows", "8", "--adapt-bn-images", "2", "--adapt-bn-min-images", "1",
                         "--time-budget", "600"]) == 0
    names = sorted(p.name for p in (tmp_path / "plain").glob("*.npy"))
    assert len(names) == 6
    changed = [not np.array_equal(np.load(tmp_path / "plain" / n), np.load(tmp_path / "adapted" / n)) for n in names]
    assert all(changed)
    with pytest.raises(SystemExit) as exc:  # checked when parsed, as every option value is
        predict.main([*base, str(tmp_path / "x"), "--out", str(tmp_path / "x.csv"), "--adapt-bn",
                      "--adapt-bn-windows", "0"])
    assert exc.value.code == 2 and "argument --adapt-bn-windows" in capsys.readouterr().err


class OutOfMemoryInTraining(EncoderDecoder):
    """Predicts as EncoderDecoder, but its training-mode forward raises as CUDA out of memory would."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoder[1].training:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


def test_a_member_whose_adaptation_raises_is_left_as_trained_with_a_warning(
        demo_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A deterministic failure inside AdaBN costs that member's adaptation, never the run (or a restart loop)."""
    torch.manual_seed(0)
    failing, working = _member(OutOfMemoryInTraining().eval()), _member(EncoderDecoder().eval())
    trained = {name: bn.running_mean.clone() for name, bn in encoder_batchnorms(failing.predictor.model)}
    table = pd.read_csv(demo_data / "test.csv")
    with caplog.at_level(logging.WARNING):
        adaptation = adapt_batchnorm(table, demo_data / "test_images", [failing, working], windows=4, max_images=1)
    assert any("adaptation failed (RuntimeError: CUDA out of memory" in r.getMessage() for r in caplog.records)
    for state in adaptation.states.values():
        assert id(failing) not in state and id(working) in state
    for key in adaptation.states:
        adaptation.use(key, [failing, working])
        for name, bn in encoder_batchnorms(failing.predictor.model):
            assert torch.equal(bn.running_mean, trained[name])  # not the reset buffers of the failed forward
            assert not bn.training


@pytest.mark.slow
def test_predict_with_adabn_failing_inside_predicts_every_row(tmp_path: Path, demo_data: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The whole loop: AdaBN raising inside leaves the member unadapted and every row predicted (exit 0)."""
    table = pd.read_csv(demo_data / "test.csv")
    member = _member(OutOfMemoryInTraining().eval())
    with caplog.at_level(logging.WARNING):
        run = predict.predict_table(table, demo_data / "test_images", [member],
                                    predict.Options(adapt_bn="all", adapt_bn_windows=4, adapt_bn_images=1, adapt_bn_min_images=1,
                                                    scale_mode="none"))
    assert [r.status for r in run.results] == ["ok"] * len(table)
    assert any("adaptation failed" in r.getMessage() for r in caplog.records)
