"""The export contract, for every family: what a trainer writes, the kernel's loader reads back to the same outputs.

TorchScript families (MRN, mmseg) go through train.export.export_torchscript: model.ts, the torch version it was
traced with, config.json with framework "torchscript". smp UNets are saved as a state_dict that inference rebuilds
with the same builder (inference.engine.models.smp_model) the trainer used.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.checkpoint import CheckpointConfig
from inference.engine.models import TORCH_VERSION_SUFFIX
from inference.engine.predictor import load_predictor
from train.configs.fastai.base import FastaiConfig
from train.export import SegmentorLogits, export_torchscript
from train.models import MRN, build_model

TILE = 64


def _config(**kw: object) -> CheckpointConfig:
    base = dict(name="t", fold=0, framework="smp", task="binary", classes=["ftu"], tile_size=TILE, arch="Unet",
                encoder="tu-resnet18", pixel_size=0.8)
    base.update(kw)
    return CheckpointConfig(**base)


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (TILE, TILE, 3), dtype=np.uint8)


def _assert_torchscript_folder(folder: Path) -> None:
    data = json.loads((folder / "config.json").read_text())
    assert data["framework"] == "torchscript" and data["weights"] == "model.ts"
    assert (folder / "model.ts").is_file()
    assert (folder / f"model.ts{TORCH_VERSION_SUFFIX}").read_text() == torch.__version__


def test_mrn_export_contract(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MRN("tu-resnet18", context=2).eval()
    config = _config(arch="MRN", context=2)
    export_torchscript(model, torch.randn(1, 6, TILE, TILE), tmp_path, config)
    _assert_torchscript_folder(tmp_path)
    x = torch.randn(3, 6, TILE, TILE)
    loaded = torch.jit.load(str(tmp_path / "model.ts"))
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-4)
    assert load_predictor(tmp_path).config.context == 2
    assert model.training is False and next(model.parameters()).device.type == "cpu"  # the module is left as it was


def test_export_refuses_a_trace_that_differs_from_eager(tmp_path: Path) -> None:
    class BatchDependent(torch.nn.Module):  # traced at batch 1, the python branch is frozen: batch 2 differs
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.shape[0] == 1 else x * 3

    with pytest.raises(RuntimeError, match="differs from the eager model"):
        export_torchscript(BatchDependent(), torch.randn(1, 3, 8, 8), tmp_path, _config(tile_size=8))
    assert not (tmp_path / "config.json").exists()  # no config.json: the kernel never loads a bad export
    # traced at batch 2 (as export_segmentor does), the check runs at batch 1 and catches the same frozen branch
    with pytest.raises(RuntimeError, match="differs from the eager model"):
        export_torchscript(BatchDependent(), torch.randn(2, 3, 8, 8), tmp_path, _config(tile_size=8))
    with pytest.raises(ValueError, match="another"):
        export_torchscript(BatchDependent(), torch.randn(2, 3, 8, 8), tmp_path, _config(tile_size=8), check_batch=2)
    assert not (tmp_path / "config.json").exists()


def test_smp_unet_contract(tmp_path: Path) -> None:
    """The fastai trainer saves model.pth; inference rebuilds it with the same builder and gets the same output."""
    torch.manual_seed(0)
    cfg = FastaiConfig(encoder="tu-resnet18", encoder_weights=None, tile_size=TILE, decoder_norm="groupnorm")
    model = build_model(cfg).eval()
    torch.save(model.state_dict(), tmp_path / "model.pth")
    _config(decoder_norm="groupnorm").save(tmp_path)
    predictor = load_predictor(tmp_path)
    x = torch.from_numpy(_image()).permute(2, 0, 1)[None]
    with torch.no_grad():
        mine = model((x.float() - predictor._mean) / predictor._std).sigmoid()
        theirs = predictor._forward(x)
    assert torch.allclose(mine, theirs, atol=1e-5)


@pytest.mark.mmseg
def test_mmseg_export_contract(tmp_path: Path) -> None:
    pytest.importorskip("mmseg")
    from mmengine.config import Config

    from train.export import export_segmentor
    from train.mmseg_ext.checkpoint import build_segmentor

    demo = Path(__file__).resolve().parents[2] / "train/configs/mmseg/upernet_convnext-demo.py"
    segmentor = build_segmentor(Config.fromfile(str(demo))).eval()
    config = _config(task="multiclass", classes=["background", "kidney", "prostate", "largeintestine", "spleen",
                                                 "lung"], framework="torchscript", weights="model.ts")
    export_segmentor(segmentor, tmp_path, config)
    _assert_torchscript_folder(tmp_path)
    x = torch.randn(3, 3, TILE, TILE)
    with torch.no_grad():
        assert torch.allclose(SegmentorLogits(segmentor).eval()(x), torch.jit.load(str(tmp_path / "model.ts"))(x),
                              atol=1e-4)


HOSTILE = {
    "statement": 'import os\nos.system("touch {flag}")\nmodel = dict(type="EncoderDecoder")\n',
    "call": 'model = dict(type=__import__("os").system("touch {flag}"))\n',
    "attribute": 'crop_size = (128, 128)\nnorm = open("{flag}", "w").name\n',
    "type": 'model = dict(type="EncoderDecoder", backbone=dict(type="os.system", command="touch {flag}"))\n',
    "import": 'custom_imports = dict(imports=["antigravity"])\nflag = "{flag}"\n',
}


def _run_folder(folder: Path, config_text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mmseg_config.py").write_text(config_text)
    torch.save({"state_dict": {}}, folder / "best.pth")
    _config(framework="torchscript", weights="model.ts").save(folder)
    return folder


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_export_never_executes_a_run_folders_config(tmp_path: Path, kind: str) -> None:
    from train.export import UntrustedRunFolder, export_run, main

    flag = tmp_path / "PWNED"
    run = _run_folder(tmp_path / "run", HOSTILE[kind].format(flag=flag))
    with pytest.raises(UntrustedRunFolder, match="refused, nothing"):
        export_run(run)
    with pytest.raises(SystemExit) as exit_info:
        main(["--run-dir", str(run)])
    assert exit_info.value.code == 2
    assert not flag.exists(), "the run folder's mmseg_config.py was executed"


def test_export_refuses_files_that_leave_the_run_folder(tmp_path: Path) -> None:
    from train.export import UntrustedRunFolder, export_run

    run = _run_folder(tmp_path / "run", "crop_size = (128, 128)\n")
    (tmp_path / "elsewhere.py").write_text("crop_size = (128, 128)\n")
    (run / "mmseg_config.py").unlink()
    (run / "mmseg_config.py").symlink_to(tmp_path / "elsewhere.py")
    with pytest.raises(UntrustedRunFolder, match="outside the run folder"):
        export_run(run)


@pytest.mark.mmseg
def test_a_dumped_mmseg_config_reads_back_as_data(tmp_path: Path) -> None:
    """What mmengine's Config.dump writes (train.mmseg_train's mmseg_config.py) is plain data, read back equal."""
    pytest.importorskip("mmseg")
    from mmengine.config import Config

    from train.export import read_dumped_config
    from train.mmseg_ext.checkpoint import build_segmentor

    configs = Path(__file__).resolve().parents[2] / "train/configs/mmseg"
    for name in ("upernet_convnext-demo.py", "segformer_mit-b0_demo.py"):
        cfg = Config.fromfile(str(configs / name))
        cfg.dump(str(tmp_path / "mmseg_config.py"))
        back = Config(read_dumped_config(tmp_path / "mmseg_config.py"))
        assert back.to_dict() == Config.fromfile(str(tmp_path / "mmseg_config.py")).to_dict()
        build_segmentor(back)  # the custom_imports were imported by Config.fromfile above
