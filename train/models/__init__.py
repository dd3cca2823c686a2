"""Networks as plain nn.Modules (MRN) and the one builder used by the trainers (build_model)."""

from train.models.factory import build_model, fixed_input_size, load_encoder_weights
from train.models.mrn import MRN

__all__ = ["MRN", "build_model", "fixed_input_size", "load_encoder_weights"]
