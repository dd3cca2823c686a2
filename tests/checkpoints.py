"""Checkpoint folders made without training, for inference tests and benchmarks (random or fixed weights)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from inference.checkpoint import CheckpointConfig
from inference.engine.models import TORCH_VERSION_SUFFIX
from inference.organs import CLASSES


def make_smp_checkpoint(
    folder: Path, tile: int = 64, encoder: str = "tu-resnet18", seed: int = 0, logit: float | None = None, **config
) -> Path:
    """A random-init binary smp Unet saved as model.pth + config.json (framework "smp").

    logit: zero the segmentation head's weights and set its bias, so the model outputs this logit everywhere
    (a positive value gives a non-empty mask for any image).
    """
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    model = smp.create_model("Unet", encoder_name=encoder, encoder_weights=None, classes=1)
    if logit is not None:
        head = model.segmentation_head[0]
        with torch.no_grad():
            head.weight.zero_()
            head.bias.fill_(logit)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "model.pth")
    fields = dict(name=folder.parent.name, fold=0, framework="smp", task="binary", classes=["ftu"],
                  tile_size=tile, arch="Unet", encoder=encoder)
    CheckpointConfig(**{**fields, **config}).save(folder)
    return folder


class TinyNet(nn.Module):
    """Two convolutions: enough structure for a multiclass TorchScript checkpoint."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ConstantNet(nn.Module):
    """Outputs the same logits at every pixel, whatever the input: seams would show in its blended map."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, x.shape[2], x.shape[3]) + 0.0 * x[:, :1]


class ColourNet(nn.Module):
    """Multiclass logits from the input's red channel: class `hot` wins where red is bright, background elsewhere."""

    def __init__(self, hot: int, channels: int = len(CLASSES)) -> None:
        super().__init__()
        self.hot, self.channels = hot, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, :1]
        logits = torch.zeros(x.shape[0], self.channels, x.shape[2], x.shape[3], dtype=x.dtype, device=x.device)
        return logits + torch.cat([-red if c == 0 else (red if c == self.hot else 0 * red) for c in range(self.channels)], 1)


def make_torchscript_checkpoint(
    folder: Path, module: nn.Module | None = None, tile: int = 64, task: str = "multiclass", **config
) -> Path:
    """Trace `module` (default TinyNet with 6 classes) at tile x tile and save model.ts + config.json."""
    classes = list(CLASSES) if task == "multiclass" else ["ftu"]
    torch.manual_seed(0)
    module = (module or TinyNet(len(classes))).eval()
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():  # torch marks jit deprecated; the contract uses it
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(module, torch.randn(1, 3, tile, tile), check_trace=False)
        torch.jit.save(traced, str(folder / "model.ts"))
    (folder / f"model.ts{TORCH_VERSION_SUFFIX}").write_text(torch.__version__)  # as train.export records it
    fields = dict(name=folder.parent.name, fold=0, framework="torchscript", task=task, classes=classes,
                  tile_size=tile, weights="model.ts", arch="", encoder="")
    CheckpointConfig(**{**fields, **config}).save(folder)
    return folder


SEGFORMER_SIDE = 128  # the demo tile set's tiles
# The session SegFormer run's iteration cap (tests/conftest.py segformer_run): SEGFORMER_ITERS iterations, validated
# and checkpointed every SEGFORMER_VAL_INTERVAL, so every run makes the same validations whatever the machine's load.
SEGFORMER_ITERS, SEGFORMER_VAL_INTERVAL = 40, 20


def segformer_tile_options(side: int) -> list[str]:
    """--cfg-options that move the SegFormer CPU config to another tile size (its pipeline and padding follow it)."""
    size = f"({side},{side})"
    return [
        f"tile_size={side}",
        f"model.data_preprocessor.size={size}",
        f"train_dataloader.dataset.pipeline.4.scale={size}",
        f"train_dataloader.dataset.pipeline.5.crop_size={size}",
    ]
