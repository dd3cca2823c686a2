"""The ensemble of a command line: --models folders loaded into members, and the members of one image."""

from __future__ import annotations

import logging
from pathlib import Path

from inference.engine.ensemble import Member
from inference.engine.models import resolve_checkpoints, resolve_device
from inference.engine.predictor import load_predictor

log = logging.getLogger("inference.predict")


def load_members(
    models: list[Path], weights: list[float] | None, device: str, batch_size: int, blend: str
) -> list[Member]:
    """Expand RUN_DIRs into checkpoint folders and load each; a RUN_DIR's weight is split over its folds.

    A folder that cannot be loaded raises RuntimeError naming the --models entry, the folder and the cause.
    """
    expanded = _expand(models, weights)
    dev = resolve_device(device)
    members = []
    for run, folder, share in expanded:
        try:
            members.append(Member(load_predictor(folder, dev, batch_size, blend), share))
        except FileNotFoundError:
            raise
        except Exception as exc:  # a corrupt config.json or weights file: say which fold, never a traceback
            raise RuntimeError(f"--models {run}: cannot load checkpoint {folder}: {exc}") from exc
    return members


def member_folders(models: list[Path], weights: list[float] | None) -> list[tuple[Path, float]]:
    """(checkpoint folder, weight) of every member load_members would load, in its order, without loading any."""
    return [(folder, share) for _, folder, share in _expand(models, weights)]


def _expand(models: list[Path], weights: list[float] | None) -> list[tuple[Path, Path, float]]:
    """(--models entry, checkpoint folder, weight) per member: a RUN_DIR's weight split equally over its folds."""
    if weights is not None and len(weights) != len(models):
        raise ValueError(f"--weights has {len(weights)} value(s) for {len(models)} --models entries")
    out = []
    for i, run in enumerate(models):
        folders = resolve_checkpoints(run)
        share = (weights[i] if weights is not None else 1.0) / len(folders)
        out += [(run, folder, share) for folder in folders]
    return out


def oof_members(members: list[Member]) -> list[Member]:
    """Members usable for out-of-fold prediction: fold -1 checkpoints (trained on every image) are left out."""
    kept = []
    for m in members:
        if m.predictor.config.fold < 0:
            log.warning("--folds: %s has fold %d (trained on all data): left out", m.predictor.name,
                        m.predictor.config.fold)
        else:
            kept.append(m)
    return kept


def row_members(
    members: list[Member], fold: int | None, dropped: tuple[int, ...]
) -> list[Member]:
    """The members for one image: its fold's checkpoints under --folds, minus those the time budget dropped."""
    own = [i for i, m in enumerate(members) if fold is None or m.predictor.config.fold == fold]
    kept = [i for i in own if i not in dropped]
    if own and not kept:  # the budget never leaves an image without a model
        kept = [max(own, key=lambda i: members[i].weight)]
    return [members[i] for i in kept]
