"""Networks as plain nn.Modules (MRN), the architecture table and the one builder used by the trainers (build_model)."""

from train.models.architectures import ARCHITECTURES, Architecture, architecture, fixed_input_size
from train.models.checkpointing import enable_gradient_checkpointing
from train.models.factory import build_model, exported_as_torchscript, load_encoder_weights
from train.models.mrn import MRN

__all__ = [
    "ARCHITECTURES",
    "MRN",
    "Architecture",
    "architecture",
    "build_model",
    "enable_gradient_checkpointing",
    "exported_as_torchscript",
    "fixed_input_size",
    "load_encoder_weights",
]
