"""Checkpoint weight averaging (3rd place: the mean of the 3 best checkpoints' weights as the fold's model).

Both trainers keep the weights of K epochs / validations on disk (SnapshotPool), ranked by validation Dice
("dice": the K best) or by time ("last": the K most recent), and at the end load the element-wise mean of
their state dicts. BatchNorm buffers are averaged like the weights: running_mean and running_var become the
mean of the K snapshots' statistics (the snapshots are close in weight space, so their statistics are close
too; re-estimating them would need a pass over the training data the trainers do not make after fitting);
integer buffers such as num_batches_tracked take the largest value. The averaged model is then validated again
through the submission path, so metrics.json holds the Dice of the model actually written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from inference.atomic import atomic_write, write_json

RULES = ("dice", "last")
INDEX = "snapshots.json"


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of state dicts with the same keys; integer tensors (BN's num_batches_tracked) take the max."""
    if not states:
        raise ValueError("average_state_dicts: no state dicts to average")
    keys = list(states[0])
    for i, state in enumerate(states[1:], 1):
        if list(state) != keys:
            missing, extra = sorted(set(keys) - set(state)), sorted(set(state) - set(keys))
            raise ValueError(f"state dict {i} has other keys than the first (missing {missing[:3]}, extra {extra[:3]})")
    out = {}
    for key in keys:
        values = [s[key].detach().cpu() for s in states]
        if values[0].is_floating_point():
            out[key] = torch.stack([v.double() for v in values]).mean(0).to(values[0].dtype)
        else:
            out[key] = torch.stack(values).max(0).values
    return out


def check_rule(k: int, rule: str) -> None:
    """Fail early on an averaging setting the trainers cannot follow."""
    if k < 0:
        raise ValueError(f"average_k must be >= 0 (0 = no averaging), got {k}")
    if rule not in RULES:
        raise ValueError(f"average_by {rule!r} not in {RULES}")


class SnapshotPool:
    """Up to K state dicts on disk in `folder`, ranked by score ("dice") or recency ("last"); survives restarts."""

    def __init__(self, folder: str | Path, k: int, rule: str = "dice") -> None:
        check_rule(k, rule)
        self.folder, self.k, self.rule = Path(folder), k, rule
        index = self.folder / INDEX
        # a resumed run continues with the snapshots it kept before the interruption
        self.entries: list[dict] = json.loads(index.read_text()) if index.is_file() else []

    def offer(self, step: int, state: dict[str, torch.Tensor], score: float | None = None) -> bool:
        """Keep this step's weights if they rank among the K kept; returns whether they were kept."""
        if self.rule == "dice" and score is None:
            raise ValueError("SnapshotPool(rule='dice') needs the step's validation score")
        self.entries = [e for e in self.entries if e["step"] != step]  # a re-run of a step replaces its snapshot
        candidate = dict(step=int(step), score=None if score is None else float(score), file=f"step{int(step)}.pth")
        ranked = sorted([*self.entries, candidate], key=self._rank, reverse=True)
        kept = ranked[: self.k]
        if candidate in kept:
            with atomic_write(self.folder / candidate["file"], "wb") as handle:
                torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, handle)
        self.entries = kept
        write_json(self.folder / INDEX, self.entries, indent=1)  # before the unlinks: never names a removed file
        for dropped in ranked[self.k :]:
            (self.folder / dropped["file"]).unlink(missing_ok=True)
        return candidate in kept

    def _rank(self, entry: dict) -> tuple:
        # ties in Dice go to the later step (further trained); "last" ranks by step alone
        return (entry["score"], entry["step"]) if self.rule == "dice" else (entry["step"],)

    @property
    def steps(self) -> list[int]:
        """The kept steps in training order."""
        return sorted(e["step"] for e in self.entries)

    def average(self) -> dict[str, torch.Tensor]:
        """Mean state dict of the kept snapshots."""
        if not self.entries:
            raise RuntimeError(f"{self.folder}: no snapshots to average (did any epoch or validation finish?)")
        files = [self.folder / e["file"] for e in sorted(self.entries, key=lambda e: e["step"])]
        return average_state_dicts([torch.load(f, map_location="cpu", weights_only=True) for f in files])

    def record(self) -> dict:
        """What was averaged, for metrics.json: the rule, K, and each kept step with its score."""
        ordered = sorted(self.entries, key=lambda e: e["step"])
        return dict(k=self.k, by=self.rule, steps=[e["step"] for e in ordered], scores=[e["score"] for e in ordered])
