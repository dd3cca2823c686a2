"""The architectures the fastai trainer builds, by config `arch`: how each is built, what input it takes and how
it is exported. A table instead of `if arch == "MRN"` in the config check, the builder and the exporter.

Any name not in ARCHITECTURES is an smp architecture ("Unet", "UnetPlusPlus", ...: smp.create_model's `arch`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

# timm encoders built for one input size (CoaT's patch embeddings and position encodings use a fixed grid): built
# at the tile size and exported as TorchScript, since config.json has no field for encoder arguments
FIXED_SIZE_ENCODERS = ("tu-coat_",)


def fixed_input_size(encoder: str) -> bool:
    """True for encoders that only take the input size they were built for."""
    return encoder.startswith(FIXED_SIZE_ENCODERS)


@dataclass(frozen=True)
class Architecture:
    """What the trainer needs to know about one architecture."""

    # (encoder, context, upsampling, decoder_norm, tile_size, encoder_weights by name or None) -> model
    build: Callable[..., nn.Module]
    encoders: Callable[[nn.Module], list[nn.Module]]  # the modules a local encoder-weights file loads into
    context_view: bool = False  # takes a context view (config context >= 2) as input channels 3-5; crop sampler only
    torchscript: bool = False  # exported as model.ts: inference cannot rebuild it from config.json


def _build_smp(encoder: str, context: int, upsampling: str, decoder_norm: str, tile_size: int,
               encoder_weights: str | None, arch: str) -> nn.Module:
    from inference.engine.models import smp_model

    sized: dict[str, Any] = {"img_size": tile_size} if fixed_input_size(encoder) else {}
    return smp_model(arch, encoder, classes=1, decoder_norm=decoder_norm, encoder_weights=encoder_weights, **sized)


def _build_mrn(encoder: str, context: int, upsampling: str, decoder_norm: str, tile_size: int,
               encoder_weights: str | None, arch: str) -> nn.Module:
    from train.models.mrn import MRN

    return MRN(encoder, context, upsampling, classes=1, encoder_weights=encoder_weights)


SMP = Architecture(build=_build_smp, encoders=lambda model: [model.encoder])
ARCHITECTURES: dict[str, Architecture] = {
    # train.models.mrn: a second encoder sees a context view; not an smp model, so exported as TorchScript
    "MRN": Architecture(build=_build_mrn, encoders=lambda model: [model.fine, model.wide], context_view=True,
                        torchscript=True),
}


def architecture(arch: str) -> Architecture:
    """The table entry of a config's arch (smp's for any name not listed)."""
    return ARCHITECTURES.get(arch, SMP)
