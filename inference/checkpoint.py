"""The self-describing checkpoint folder both trainers write and the inference engine reads.

    outputs/<config-stem>/fold<k>/
        config.json   CheckpointConfig below: everything inference needs, nothing from train/
        model.pth     smp state_dict (framework "smp") or model.ts TorchScript (framework "torchscript")
        metrics.json  validation metrics (trainer-specific keys, "dice" always present)

Images are normalised as ((rgb / 255) - mean) / std, channels first. A binary model outputs one logit
channel (sigmoid); a multiclass model outputs len(CLASSES) logits (softmax) in organ-table order.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

FORMAT = "hubmap-ftu-checkpoint/1"
FRAMEWORKS = ("smp", "torchscript")
TASKS = ("binary", "multiclass")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

INPUT_MODES = ("rgb", "grey", "hematoxylin")  # what the network sees of an image (inference.input_modes)


@dataclass
class CheckpointConfig:
    name: str  # config stem, e.g. "unet_r18_demo"
    fold: int  # -1 = trained on all folds
    framework: str  # "smp": smp.create_model(arch, encoder) + state_dict; "torchscript": torch.jit.load
    task: str  # "binary" (1 output channel) or "multiclass" (background + 5 organs)
    classes: list[str]  # ["ftu"] for binary, inference.organs.CLASSES for multiclass
    tile_size: int  # square input side the model was trained on
    weights: str = "model.pth"  # file inside the folder
    arch: str = "Unet"  # smp architecture name (framework "smp")
    encoder: str = "tu-resnet18"  # smp encoder name (framework "smp")
    decoder_norm: str = "batchnorm"  # decoder norm (framework "smp", predictor.smp_model): "groupnorm" for small batches
    overlap: float = 0.5  # sliding-window overlap as a fraction of the tile
    reduce: int | None = None  # fixed downscale factor; None = adaptive
    reduce_k: float = 1.0  # adaptive rule: reduce = ceil(max(h, w) / (tile_size * reduce_k))
    pixel_size: float | None = None  # um/px of the training tiles, for --scale-mode pixel-size
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    threshold: float = 0.5  # default binary cut-off (organ thresholds may override at inference)
    context: int = 1  # MRN: the model also takes a view of context x the tile's field as channels 3-5 (1 = none)
    input_mode: str = "rgb"  # what the network sees: "rgb", "grey" or "hematoxylin" (inference.input_modes)
    data_sources: list[str] | None = None  # data_source values of the training images (AdaBN's "unseen" mode)
    format: str = FORMAT
    train: dict = field(default_factory=dict)  # the resolved training config, for the record only

    def __post_init__(self) -> None:
        if self.framework not in FRAMEWORKS:
            raise ValueError(f"config.json: framework {self.framework!r} not in {FRAMEWORKS}")
        if self.task not in TASKS:
            raise ValueError(f"config.json: task {self.task!r} not in {TASKS}")
        if self.task == "binary" and len(self.classes) != 1:
            raise ValueError(f"config.json: a binary model has one class, got {self.classes}")
        if self.context < 1:
            raise ValueError(f"config.json: context must be >= 1, got {self.context}")
        if self.input_mode not in INPUT_MODES:
            raise ValueError(f"config.json: input_mode {self.input_mode!r} not in {INPUT_MODES}")
        if self.format != FORMAT:
            raise ValueError(f"config.json: format {self.format!r} is not {FORMAT!r}; re-export the checkpoint")

    def save(self, folder: str | Path) -> Path:
        """Write config.json into a checkpoint folder."""
        path = Path(folder) / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> CheckpointConfig:
        """Read config.json from a checkpoint folder, naming unknown or missing keys."""
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {folder} a checkpoint folder (outputs/<run>/fold<k>)?")
        data = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {unknown}; this inference code expects {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"{path}: {exc}") from exc
