"""Typed defaults of the fastai binary UNet trainer, and finding and loading experiment files.

An experiment file (e.g. recipes/unet_effb7_768.py) defines `config = FastaiConfig(...)` with only the fields it
changes, or `config = replace(other, ...)` over another experiment or a shared recipe (_gpu_recipe.py); its stem
names the run and the output folder outputs/<stem>/fold<k>/. Experiments live in one of the GROUPS sub-packages;
a bare stem finds its file in whichever group holds it, so stems are unique across groups.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

SCHEDULES = ("one_cycle", "flat_cos")
LOSSES = ("bce_dice", "bce_lovasz", "lovasz")
SAMPLERS = ("crops", "tiles")
DECODER_NORMS = ("batchnorm", "groupnorm", "instancenorm", "identity")
CONFIG_DIR = Path(__file__).resolve().parent
# sub-packages of experiment files, in `--list` order: what a GPU user trains, what runs on a laptop, what
# benchmarks/ compares (each a one-field change from a CPU recipe)
GROUPS = ("recipes", "cpu", "ablations")


@dataclass(frozen=True)
class FastaiConfig:
    # model: smp.create_model(arch, encoder_name=encoder, encoder_weights=..., classes=1), or arch "MRN"
    # (train.models.mrn: a second encoder sees a context view covering `context` x the crop's field; TorchScript export)
    arch: str = "Unet"
    encoder: str = "tu-resnet18"
    context: int = 1  # MRN only: the context view's field in crop fields (2 or 4)
    upsampling: str = "transpose"  # MRN only: "transpose" or "bilinear" decoder upsampling
    encoder_weights: str | None = "imagenet"  # "imagenet" (downloaded by timm), None (random init) or a local file
    # Normalisation for small batches: BatchNorm statistics of 2-4 images per GPU are noise. The decoder's norm
    # ("groupnorm" does not depend on the batch; inference.engine.models.smp_model), and freezing the encoder's
    # pretrained BN statistics (eval-mode BN, affine still trained). Several GPUs: fastai distrib_ctx's SyncBN.
    decoder_norm: str = "batchnorm"
    freeze_encoder_bn: bool = False
    # data
    tile_size: int = 768  # model input side; tiles of another size are resized on load
    sampler: str = "crops"  # "crops": random crops at pixel_size (train.crops); "tiles": the tile set's tiles
    pixel_size: float | None = 0.8  # um/px the model trains and predicts at (sampler crops; tile set --scaled P)
    ftu_share: float = 0.5  # crops centred on an FTU (picked per FTU, so small FTUs count as much as large ones)
    organ_balance: bool = True  # crops draw organs uniformly
    scale_range: tuple[float, float] = (0.8, 1.25)  # crop side / tile side, log-uniform: physical scale jitter
    lowres_prob: float = 0.0  # crops blurred through a lower resolution (small, coarse HuBMAP images)
    lowres_range: tuple[float, float] = (2.0, 8.0)
    train_splits: tuple[int, ...] | None = None  # split levels to train on (None: every split in the tile set)
    train_reduces: tuple[int, ...] | None = None  # reduce levels to train on (None: every reduce in the tile set)
    use_lpb: bool = True  # add the tile set's Laplacian-pyramid blends (source == "lpb") to training
    # sampler crops: probability of cutting a crop from a stain-transferred copy of its image (data_prep.stain_copies;
    # 0 = the copies are not loaded)
    stain_copy_share: float = 0.0
    use_extra_data: bool = True  # train on the tile set's extra rows (data_prep.tiles --extra-data, e.g. pseudo-labels)
    augment: str = "seed10"  # data_prep.augment preset
    # what the network sees (inference.input_modes, recorded in config.json): "rgb", "grey" or "hematoxylin" (the
    # one stain HPA's DAB and HuBMAP's H&E / PAS images share)
    input_mode: str = "rgb"
    # reference images (paths) of the histogram-matching presets ("...+histmatch"), e.g. HuBMAP H&E / PAS images
    histmatch_targets: tuple[str, ...] = ()
    valid_split: int | None = None  # sampler tiles: validation tiles of fastai's valid_loss (None: finest split)
    # optimisation
    epochs: int = 20
    bs: int = 8
    lr: float = 1e-3
    wd: float = 1e-2
    schedule: str = "one_cycle"  # fit_one_cycle or fit_flat_cos
    pct_start: float | None = None  # warm-up share (one_cycle) or flat share (flat_cos); None: fastai's 0.25 / 0.75
    loss: str = "bce_dice"
    grad_accum: int = 1  # batches per optimizer step
    batches_per_epoch: int | None = None  # draw this many random batches per epoch (None: one pass over the images)
    minutes: float | None = None  # training time budget: epochs end by the clock, the LR schedule follows the clock
    mixed_precision: bool = True  # CUDA only; ignored on CPU
    channels_last: bool = False
    # recompute each block's activations in the backward pass (train.models.checkpointing): far less memory for
    # one more forward pass per step; the model and its files are unchanged
    grad_checkpointing: bool = False
    num_workers: int = 4
    seed: int = 42
    # weight averaging (3rd place): the fold's model is the mean of the weights of the average_k best epochs by
    # validation Dice (average_by "dice") or of the last average_k epochs ("last"); 0 = the best epoch alone
    average_k: int = 0
    average_by: str = "dice"
    # inference settings written to config.json
    overlap: float = 0.5
    reduce: int | None = None  # fixed downscale at inference (None: adaptive, see reduce_k)
    reduce_k: float | None = None  # adaptive rule's k (reduce mode only); None: derived from the training scale
    threshold: float = 0.5
    oof_max_side: int = 512  # longest side of the saved out-of-fold probability maps

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} not in {SCHEDULES}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss {self.loss!r} not in {LOSSES}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r} not in {SAMPLERS}")
        if self.sampler == "crops" and not (self.pixel_size and self.pixel_size > 0):
            raise ValueError("sampler 'crops' needs pixel_size (um/px the model trains and predicts at)")
        from train.models.architectures import architecture

        context_view = architecture(self.arch).context_view
        if context_view != (self.context > 1):
            raise ValueError(
                f"arch {self.arch} needs context {'>= 2' if context_view else '1'} (only architectures with a context "
                f"view, e.g. MRN, take context >= 2); got {self.context}"
            )
        if context_view and self.sampler != "crops":
            raise ValueError(f"arch {self.arch} trains on the crop sampler (it builds the context views): set sampler='crops'")
        if self.decoder_norm not in DECODER_NORMS:
            raise ValueError(f"decoder_norm {self.decoder_norm!r} not in {DECODER_NORMS}")
        from train.averaging import check_rule

        check_rule(self.average_k, self.average_by)
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes must be positive, got {self.minutes}")
        if self.tile_size % 32:
            raise ValueError(f"tile_size {self.tile_size} must be a multiple of 32 (the UNet downsamples 5 times)")
        if self.epochs < 1 or self.bs < 1 or self.grad_accum < 1:
            raise ValueError(f"epochs, bs and grad_accum must be >= 1, got {self.epochs}, {self.bs}, {self.grad_accum}")
        from data_prep.augment import PRESETS

        if self.augment not in PRESETS:
            raise ValueError(f"augment {self.augment!r} not in {PRESETS}")
        from inference.checkpoint import INPUT_MODES

        if self.input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode {self.input_mode!r} not in {INPUT_MODES}")
        if not 0.0 <= self.stain_copy_share <= 1.0:
            raise ValueError(f"stain_copy_share must be in [0, 1], got {self.stain_copy_share}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def override(self, **changes: Any) -> FastaiConfig:
        """A copy with some fields changed (None values are ignored, so CLI defaults pass through)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; FastaiConfig has {sorted(known)}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def experiment_paths(group: str | None = None) -> dict[str, Path]:
    """Stem -> file of every experiment, or of one group's; in GROUPS order, then by stem within a group."""
    groups = GROUPS if group is None else (group,)
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown experiment group(s) {unknown}; groups: {', '.join(GROUPS)}")
    paths: dict[str, Path] = {}
    for g in groups:
        for path in sorted((CONFIG_DIR / g).glob("*.py")):
            if path.stem.startswith("_"):  # __init__.py, shared recipes
                continue
            if path.stem in paths:
                raise ValueError(f"experiment {path.stem} is in two groups ({paths[path.stem]} and {path}): "
                                 "a bare name must find one file, rename one")
            paths[path.stem] = path
    return paths


def experiment_names(group: str | None = None) -> list[str]:
    """Sorted stems of the experiments in every group, or in one group ("recipes", "cpu", "ablations")."""
    return sorted(experiment_paths(group))


def first_doc_line(path: Path) -> str:
    """The first line of a Python file's module docstring ("" without one)."""
    doc = (ast.get_docstring(ast.parse(path.read_text())) or "").strip()
    return doc.splitlines()[0] if doc else ""


def group_summary(group: str) -> str:
    """The first line of a group package's docstring (its __init__.py)."""
    return first_doc_line(CONFIG_DIR / group / "__init__.py")


def experiment_summaries(group: str | None = None) -> dict[str, str]:
    """Each experiment's name and the first line of its docstring (`python -m train.fastai_unet --list`)."""
    return {name: first_doc_line(path) for name, path in sorted(experiment_paths(group).items())}


def resolve_config_path(config: str | Path) -> Path:
    """A config file path, or a bare experiment name looked up in the groups of train/configs/fastai/."""
    path = Path(config)
    if path.is_file():
        return path
    if path.suffix in ("", ".py") and path.parent == Path("."):
        named = experiment_paths().get(path.stem)
        if named is not None:
            return named
    moved = experiment_paths().get(path.stem)
    if moved is not None:  # e.g. train/configs/fastai/<stem>.py, a path from before the experiments were grouped
        raise FileNotFoundError(f"config {config} not found: experiment {path.stem} is {moved} "
                                f"(or pass its bare name, --config {path.stem})")
    raise FileNotFoundError(f"config {config} not found; experiments in {CONFIG_DIR}: {', '.join(experiment_names())}")


def load_config(config: str | Path) -> tuple[str, FastaiConfig]:
    """Import an experiment file and return (its stem, its `config` object)."""
    path = resolve_config_path(config)
    spec = importlib.util.spec_from_file_location(f"fastai_config_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import config file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = getattr(module, "config", None)
    if not isinstance(cfg, FastaiConfig):
        raise TypeError(f"{path} must define `config = FastaiConfig(...)`, found {type(cfg).__name__}")
    return path.stem, cfg
