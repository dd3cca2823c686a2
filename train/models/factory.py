"""The one model builder of training: smp UNets through inference.engine.models.smp_model (the builder the kernel
uses to reload model.pth), MRN from train.models.mrn; encoder weights by name or from a local file, offline."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from train.configs.fastai.base import FastaiConfig
from train.models.architectures import architecture, fixed_input_size

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def exported_as_torchscript(cfg: FastaiConfig) -> bool:
    """model.ts instead of model.pth: architectures inference cannot rebuild (MRN) and fixed-size encoders (CoaT),
    whose build arguments config.json cannot hold."""
    return architecture(cfg.arch).torchscript or fixed_input_size(cfg.encoder)


def is_weights_file(encoder_weights: str | None) -> bool:
    """True when encoder_weights names a local file rather than a pretrained set such as "imagenet"."""
    return encoder_weights is not None and (
        encoder_weights.endswith(WEIGHT_SUFFIXES) or "/" in encoder_weights or Path(encoder_weights).is_file()
    )


def build_model(cfg: FastaiConfig, weights: bool = True) -> nn.Module:
    """smp model with one output channel; encoder weights from cfg (a local file loads offline).

    weights=False builds the architecture only (for reloading a checkpoint or building on the meta device).
    """
    named = cfg.encoder_weights if weights and not is_weights_file(cfg.encoder_weights) else None
    spec = architecture(cfg.arch)
    model = spec.build(cfg.encoder, cfg.context, cfg.upsampling, cfg.decoder_norm, cfg.tile_size, named, cfg.arch)
    if weights and is_weights_file(cfg.encoder_weights):
        for encoder in spec.encoders(model):
            load_encoder_weights(encoder, Path(str(cfg.encoder_weights)))
    return model


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(
            f"encoder weights file {path} not found (encoder_weights must be 'imagenet', None or a file)"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return state


def load_encoder_weights(encoder: nn.Module, path: Path) -> None:
    """Load a timm/torchvision classifier state_dict (or an smp encoder's) into an smp encoder, offline.

    Classifier-head keys are ignored; a missing encoder weight or an extra block (another depth) is an error.
    """
    state = _read_state_dict(path)
    # smp's "tu-" encoders hold the timm features model as .model; a timm checkpoint matches that module
    target = encoder.model if hasattr(encoder, "model") and not any(k.startswith("model.") for k in state) else encoder
    own = target.state_dict()
    for prefix in ("encoder.", "module."):
        if not any(k in own for k in state) and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    try:
        missing, unexpected = target.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # same names, other shapes
        raise ValueError(f"{path} does not fit encoder {type(target).__name__}: {exc}") from exc
    # a classifier checkpoint brings its head (fc, classifier, conv_head...): modules the encoder lacks entirely
    modules = {k.split(".")[0] for k in own}
    foreign = [k for k in unexpected if k.split(".")[0] in modules]
    if missing or foreign:
        raise ValueError(
            f"{path} does not fit encoder {type(target).__name__}: {len(missing)} weight(s) missing "
            f"(e.g. {missing[:3]}), {len(foreign)} extra inside its modules (e.g. {foreign[:3]}); "
            f"file keys look like {list(state)[:3]}"
        )
