"""Checkpoint folders to networks: device choice, run-folder discovery, the smp builder, TorchScript loading.

The smp builder (smp_model) is the one place a UNet is built, for the trainers (train.models) and the kernel alike.
Loading only reads files: smp models are built with encoder_weights=None and filled from model.pth, TorchScript
models come from model.ts.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from pathlib import Path

import torch

from inference.checkpoint import CheckpointConfig

log = logging.getLogger("inference.engine.models")

TORCH_VERSION_SUFFIX = ".torch_version"  # side file next to a TorchScript file: the torch it was traced with


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is an error naming the fix."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} asked for but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(device)


def resolve_checkpoints(path: str | Path) -> list[Path]:
    """A checkpoint folder (has config.json) -> [it]; a run folder -> its fold*/ checkpoint folders, sorted."""
    path = Path(path)
    if (path / "config.json").is_file():
        return [path]
    folds = sorted(p.parent for p in path.glob("fold*/config.json"))
    if not folds:
        raise FileNotFoundError(
            f"{path} is neither a checkpoint folder (config.json) nor a run folder with fold*/config.json"
        )
    return folds


def smp_model(
    arch: str,
    encoder: str,
    classes: int,
    decoder_norm: str = "batchnorm",
    encoder_weights: str | None = None,
    **encoder_kwargs,
) -> torch.nn.Module:
    """smp.create_model with the decoder normalisation a checkpoint records (the one place both sides build it).

    decoder_norm: smp's own decoder_use_norm values ("batchnorm", "instancenorm", "identity"), or "groupnorm":
    smp's BatchNorm decoder with every BatchNorm2d replaced by GroupNorm (32 groups or fewer), which does not
    depend on the batch size. encoder_kwargs go to the timm encoder (CoaT: img_size, the one input size it takes).
    """
    import segmentation_models_pytorch as smp  # imported here: TorchScript-only kernels do not need it

    extra = {} if decoder_norm in ("batchnorm", "groupnorm") else {"decoder_use_norm": decoder_norm}
    model = smp.create_model(
        arch, encoder_name=encoder, encoder_weights=encoder_weights, in_channels=3, classes=classes, **extra, **encoder_kwargs
    )
    if decoder_norm == "groupnorm":
        _batch_to_group_norm(model.decoder)
    return model


def _batch_to_group_norm(module: torch.nn.Module) -> None:
    """Replace every BatchNorm2d below module by a GroupNorm with as many groups (<= 32) as divide its channels."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            groups = math.gcd(32, child.num_features)
            setattr(module, name, torch.nn.GroupNorm(groups, child.num_features, eps=child.eps))
        else:
            _batch_to_group_norm(child)


def version_tuple(version: str) -> tuple[int, ...]:
    """'2.4.1+cu121' -> (2, 4, 1); enough to order torch releases."""
    return tuple(int(x) for x in re.findall(r"\d+", version.split("+")[0])[:3])


def check_traced_version(path: Path) -> str | None:
    """Warn when this torch is older than the one a TorchScript file was traced with; return that version."""
    side = path.with_name(path.name + TORCH_VERSION_SUFFIX)
    if not side.is_file():
        return None
    traced = side.read_text().strip()
    if version_tuple(torch.__version__) < version_tuple(traced):
        log.warning("%s was traced with torch %s but this is torch %s: an older torch may fail to load it or "
                    "run it differently; re-export with the kernel's torch if loading fails", path, traced,
                    torch.__version__)
    return traced


class CheckpointLoadError(RuntimeError):
    """A checkpoint folder cannot be loaded; the message names the file, the fold and what to do."""


def weights_path(config: CheckpointConfig, folder: Path) -> Path:
    """The weights file of a checkpoint folder; config.weights must resolve inside the folder (no ../, no /abs)."""
    root = Path(folder).resolve()
    path = (root / config.weights).resolve()
    if not path.is_relative_to(root):
        raise CheckpointLoadError(
            f"{Path(folder) / 'config.json'} (fold {config.fold}): weights={config.weights!r} resolves to {path}, "
            f"outside the checkpoint folder {root}; weights must be a file inside it (e.g. 'model.pth')"
        )
    return path


def build_model(config: CheckpointConfig, folder: Path, device: torch.device) -> torch.nn.Module:
    """Instantiate the network of a checkpoint folder and load its weights (no network access).

    TorchScript files are programs: torch.jit.load runs the code they hold, so load only files you made or trust.
    smp weights are read with weights_only=True (plain tensors, no pickled objects).
    """
    path = weights_path(config, folder)
    where = f"{path} (checkpoint {config.name}, fold {config.fold})"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; config.json names weights={config.weights!r}")
    if config.framework == "torchscript":
        check_traced_version(path)
        try:
            with warnings.catch_warnings():  # torch marks jit deprecated; the checkpoint contract uses it on purpose
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(str(path), map_location=device).eval()
        except Exception as exc:  # torch raises RuntimeError, ValueError or zip errors for a damaged file
            raise CheckpointLoadError(
                f"{where}: not a loadable TorchScript file ({type(exc).__name__}: {str(exc)[:300]}); re-export it "
                "with train.export (with the kernel's torch), or leave this fold out of --models"
            ) from exc
    model = smp_model(config.arch, config.encoder, len(config.classes), config.decoder_norm)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, a pickle with objects weights_only refuses, not a torch file
        raise CheckpointLoadError(
            f"{where}: cannot read the weights ({type(exc).__name__}: {str(exc)[:300]}); the file is damaged or "
            "holds more than tensors: copy it again from the training run, or leave this fold out of --models"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointLoadError(f"{where}: expected a state_dict, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointLoadError(
            f"{where}: weights do not fit smp {config.arch}/{config.encoder} with {len(config.classes)} class(es); "
            f"check arch/encoder/classes in {folder / 'config.json'}\n{exc}"
        ) from exc
    return model.to(device).eval()
