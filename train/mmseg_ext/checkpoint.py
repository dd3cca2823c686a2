"""Build mmseg segmentors from configs; load mmengine checkpoints deliberately under torch's weights_only default."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import CheckpointLoader, load_checkpoint
from torch import nn


def trust_checkpoints_in(work_dir: str | Path) -> None:
    """Load the checkpoints this run writes under work_dir with weights_only=False; every other file stays safe.

    torch.load defaults to weights_only=True, and mmengine's training checkpoints (resume, best) carry its message
    hub: HistoryBuffer objects whose pickled state holds bound methods (`builtins.getattr`), which the safe unpickler
    refuses (`Unsupported global: mmengine.logging.history_buffer.HistoryBuffer`). Allow-listing getattr would open
    the safe loader for every file, so only paths under our own work folder get the full unpickler; ImageNet weights
    and any other checkpoint keep torch's default. No environment variable, no global switch.
    """
    prefix = os.path.abspath(work_dir).rstrip(os.sep) + os.sep
    root = Path(work_dir).resolve()

    def load_from_this_run(filename: str, map_location=None) -> dict:
        if not os.path.isfile(filename):
            raise FileNotFoundError(f"checkpoint {filename} not found")
        # the scheme matches path strings: work/../x.pth and symlinks out of work/ must not get the full unpickler
        trusted = Path(filename).resolve().is_relative_to(root)
        return torch.load(filename, map_location=map_location, weights_only=not trusted)

    # mmengine picks a loader by re.match of the registered prefix against the path
    CheckpointLoader.register_scheme(prefixes=re.escape(prefix), loader=load_from_this_run, force=True)


def build_segmentor(cfg: Config) -> nn.Module:
    """Build cfg.model through mmseg's MODELS registry (the one place mmseg forces a registry on us)."""
    from mmseg.registry import MODELS

    init_default_scope(cfg.get("default_scope", "mmseg"))
    return MODELS.build(cfg.model)


def load_segmentor(
    config: str | Path | Config, checkpoint: str | Path, device: str = "cpu"
) -> tuple[nn.Module, Config]:
    """Build the segmentor of an mmseg config and load a weights-only checkpoint (best.pth) into it, in eval mode."""
    cfg = config if isinstance(config, Config) else Config.fromfile(str(config))
    cfg.model.backbone.init_cfg = None  # weights come from the checkpoint, not the ImageNet file
    model = build_segmentor(cfg)
    load_checkpoint(model, str(checkpoint), map_location=device, strict=True)
    return model.to(device).eval(), cfg
