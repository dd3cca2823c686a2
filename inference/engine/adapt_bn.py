"""Test-time BatchNorm adaptation (AdaBN, Li et al. 2016): encoder BatchNorm statistics re-estimated per group.

A model trained on HPA normalises its features with HPA statistics; on H&E / PAS images those statistics are off.
Before the submission loop, every member runs in BatchNorm training mode over random windows of the test images of
each group (windows at the member's own working scale, as it will predict them) and the running mean and
variance of each BatchNorm layer of its encoder are replaced by the average of the batch statistics (what
torch.optim.swa_utils.update_bn computes with momentum=None). The decoder, GroupNorm / LayerNorm layers, and every
weight stay as trained. While predicting, each image's member uses the statistics of its image's group.

Which members adapt where (MODES): "unseen" (the default of inference.predict) adapts a member only on the groups
whose data_source it never trained on (CheckpointConfig.data_sources, written by the trainers): an HPA-trained model
adapts on Hubmap images and keeps its own statistics on HPA images, where AdaBN only costs (real tissue: in-domain
Dice fell 0.02-0.10 with AdaBN, DAB -> PAS kidney rose from 0.12 to 0.52); a checkpoint that records no sources is
left as trained, with a note. "all" adapts every member on every group (the bare --adapt-bn flag), "off" none.

A group is a (data_source, organ) pair by default (GROUPINGS "source-organ"), or a data_source alone ("source"):
five HuBMAP organs differ in stain (H&E, PAS), pixel size and tissue, so statistics pooled over all of them fit none
(pooling was why AdaBN lowered the demo's rows); on real DAB -> PAS kidney the per-group statistics are what lifts
the score (README, benchmarks/real_tissue.py).

The batch statistics are read off the running buffers: reset to mean 0 / variance 1 before each batch, one
training-mode forward leaves momentum x the batch statistic (plus (1 - momentum) x 1 for the variance). That works
for eager modules and for scripted TorchScript modules (whose momentum is a readable constant and whose BatchNorm
honours train()), but not for traced ones: torch.jit.trace bakes the eval-mode branch into the graph, so train()
changes nothing and the buffers are never written. Such members are detected by that (the buffers stay at their
reset values), restored, and left unadapted with a warning. A member whose adaptation raises (CUDA out of memory,
say) is restored and left unadapted with a warning too, and a group whose windows cannot be drawn stays as trained:
AdaBN never costs the run.

Cost: --adapt-bn-windows windows per member and data source, from at most --adapt-bn-images images of that source;
it is spent before the first image and counts against --time-budget like any other elapsed time.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from inference.engine.ensemble import Member
from inference.engine.sliding import pad_to_tile
from inference.io import read_image
from inference.organs import image_pixel_size
from inference.tiling import resize_image

log = logging.getLogger("inference.engine.adapt_bn")

ENCODER_NAMES = ("encoder", "backbone", "segmentor.backbone")  # smp models; mmseg segmentors (eager, exported)
BATCHNORM_NAMES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "BatchNormAct2d")
DEFAULT_WINDOWS = 64
DEFAULT_IMAGES = 8
# A group with fewer test images keeps the trained statistics: on the demo (one image per source and organ) AdaBN from
# a single image took Hubmap rows from 0.46 to 0.30 (spleen 0.20 -> 0.04); the real PAS kidney group has 31.
DEFAULT_MIN_IMAGES = 4
GROUPINGS = ("source-organ", "source")
MODES = ("unseen", "all", "off")


def group_key(row: object, grouping: str = "source-organ") -> str:
    """The AdaBN group of a table row: "Hubmap/kidney" (source-organ) or "Hubmap" (source)."""
    if grouping not in GROUPINGS:
        raise ValueError(f"AdaBN grouping must be one of {GROUPINGS}, got {grouping!r}")
    source = str(row.data_source)
    return source if grouping == "source" else f"{source}/{row.organ}"


def encoder_batchnorms(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every BatchNorm layer under the model's encoder (smp `encoder`, mmseg `backbone`)."""
    modules = dict(model.named_modules())
    prefix = next((name for name in ENCODER_NAMES if name in modules), None)
    if prefix is None:
        return []
    return [(name, m) for name, m in modules.items() if name.startswith(prefix + ".") and _is_batchnorm(m)]


def _is_batchnorm(module: torch.nn.Module) -> bool:
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        return True
    return isinstance(module, torch.jit.ScriptModule) and getattr(module, "original_name", "") in BATCHNORM_NAMES


@dataclass
class _Stats:
    """Running sums of one member's per-batch BatchNorm statistics."""

    layers: list[tuple[str, torch.nn.Module]]
    means: list[torch.Tensor] = field(default_factory=list)
    variances: list[torch.Tensor] = field(default_factory=list)
    batches: int = 0


def _reset(layers: list[tuple[str, torch.nn.Module]]) -> None:
    for _, bn in layers:
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.num_batches_tracked.zero_()


def _batch_statistics(bn: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The batch mean and variance one training forward from mean 0 / variance 1 left in bn (None: not written)."""
    if int(bn.num_batches_tracked) == 0:
        return None  # traced: the forward never reached the training branch
    momentum = getattr(bn, "momentum", 0.1)
    m = 1.0 if momentum is None else float(momentum)  # None: cumulative average, the first batch is taken whole
    return bn.running_mean / m, (bn.running_var - (1.0 - m)) / m


class BatchNormAdaptation:
    """Per-group encoder BatchNorm statistics for each member, swapped in image by image."""

    def __init__(self, members: list[Member], grouping: str = "source-organ", mode: str = "all") -> None:
        if mode not in MODES:
            raise ValueError(f"AdaBN mode must be one of {MODES}, got {mode!r}")
        self.members = members
        self.grouping = grouping
        self.mode = mode
        self.layers = {id(m): encoder_batchnorms(m.predictor.model) for m in members}
        self.original = {key: _snapshot(layers) for key, layers in self.layers.items()}
        self.states: dict[str, dict[int, list[tuple[torch.Tensor, torch.Tensor]]]] = {}
        self.notes: list[str] = []
        self.skipped: set[int] = set()
        for m in members:
            if not self.layers[id(m)]:
                self._skip(m, "no BatchNorm layer under an encoder/backbone module: left as trained")

    def _skip(self, member: Member, why: str) -> None:
        self.skipped.add(id(member))
        note = f"--adapt-bn: {member.predictor.name}: {why}"
        self.notes.append(note)
        log.warning(note)

    def adaptable(self) -> list[Member]:
        return [m for m in self.members if id(m) not in self.skipped]

    def wanted(self, member: Member, group: str) -> bool:
        """Whether this member adapts on this group ("Hubmap/kidney" or "Hubmap") under the mode."""
        if self.mode != "unseen":
            return self.mode == "all"
        sources = member.predictor.config.data_sources
        if sources is None:
            note = (f"--adapt-bn unseen: {member.predictor.name}: its config.json records no training data_sources; "
                    "left as trained (retrain, or pass --adapt-bn all)")
            if note not in self.notes:
                self.notes.append(note)
                log.warning(note)
            return False
        return group.split("/")[0] not in sources

    def key(self, row: object) -> str:
        """The group whose statistics a table row's image uses."""
        return group_key(row, self.grouping)

    def fit(self, source: str, windows: Iterable[tuple[Member, torch.Tensor]]) -> None:
        """Average the batch statistics of (member, uint8 window batch) pairs into group `source`'s state."""
        stats: dict[int, _Stats] = {}
        for member, batch in windows:
            key = id(member)
            if key in self.skipped:
                continue
            entry = stats.setdefault(key, _Stats(self.layers[key]))
            try:
                measured = _measure(member, entry.layers, batch)
            except Exception as exc:  # CUDA out of memory, a model that cannot train(): this member only
                self._restore(member)
                self._skip(member, f"adaptation failed ({type(exc).__name__}: {str(exc)[:200]}); left as trained")
                stats.pop(key)
                _free_cuda()
                continue
            if measured is None:
                self._restore(member)
                self._skip(member, "BatchNorm buffers did not change in training mode (a traced TorchScript "
                                   "model: torch.jit.trace fixes the eval branch); left as trained. Export with "
                                   "torch.jit.script, or ship model.pth, to adapt it")
                stats.pop(key)
                continue
            if not entry.means:
                entry.means = [mean.clone() for mean, _ in measured]
                entry.variances = [var.clone() for _, var in measured]
            else:
                for i, (mean, var) in enumerate(measured):
                    entry.means[i] += mean
                    entry.variances[i] += var
            entry.batches += 1
        self.states[source] = {
            key: [(mean / s.batches, var.clamp(min=0) / s.batches) for mean, var in zip(s.means, s.variances,
                                                                                        strict=True)]
            for key, s in stats.items() if s.batches
        }
        for member in self.members:
            self._restore(member)

    def use(self, source: object, members: list[Member]) -> None:
        """Load group `source`'s statistics into these members (the trained ones where it was not fitted)."""
        state = self.states.get(str(source), {})
        for member in members:
            key = id(member)
            if key in state:
                _load(self.layers[key], state[key])
            elif key in self.layers:
                self._restore(member)

    def restore(self) -> None:
        """Put every member's trained statistics back."""
        for member in self.members:
            self._restore(member)

    def _restore(self, member: Member) -> None:
        key = id(member)
        for (_, bn), (mean, var, tracked) in zip(self.layers[key], self.original[key], strict=True):
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(tracked)


def _free_cuda() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _snapshot(layers: list[tuple[str, torch.nn.Module]]) -> list[tuple[torch.Tensor, ...]]:
    return [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for _, bn in layers]


def _load(layers: list[tuple[str, torch.nn.Module]], state: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for (_, bn), (mean, var) in zip(layers, state, strict=True):
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)


@torch.no_grad()
def _measure(member: Member, layers: list[tuple[str, torch.nn.Module]], batch: torch.Tensor
             ) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Per-layer batch statistics of one training-mode forward of a uint8 window batch (None: not measurable)."""
    predictor = member.predictor
    _reset(layers)
    for _, bn in layers:
        bn.train()
    try:
        predictor._forward(batch.to(predictor.device))  # noqa: SLF001 - the Predictor's own normalisation and AMP
    finally:
        for _, bn in layers:
            bn.eval()
    measured = [_batch_statistics(bn) for _, bn in layers]
    if any(m is None for m in measured):
        return None
    return [(mean.clone(), var.clone()) for mean, var in measured]


def random_windows(working: np.ndarray, tile: int, count: int, rng: np.random.Generator) -> torch.Tensor:
    """(count, 3, tile, tile) uint8 windows at uniformly random positions of an (h, w, 3) working image."""
    tensor = torch.from_numpy(np.ascontiguousarray(working)).permute(2, 0, 1)
    padded, _ = pad_to_tile(tensor, tile)
    h, w = padded.shape[1:]
    ys = rng.integers(0, h - tile + 1, count)
    xs = rng.integers(0, w - tile + 1, count)
    return torch.stack([padded[:, y : y + tile, x : x + tile] for y, x in zip(ys, xs, strict=True)])


def distinct_windows(shape: tuple[int, int], tile: int, wanted: int) -> int:
    """Windows worth drawing from one working image: `wanted`, at most 4 per tile the image spans, at least 2.

    A 160 px image under a 512 px model is one padded window wherever it is cut: 64 copies of it cost 64 forwards
    (200 s on a CPU for a ResNeXt-50 UNet) and add nothing to the statistics.
    """
    spans = math.ceil(shape[0] / tile) * math.ceil(shape[1] / tile)
    return max(2, min(wanted, 4 * spans))


def drawn_rows(table: pd.DataFrame, max_images: int = DEFAULT_IMAGES, seed: int = 0,
               grouping: str = "source-organ") -> dict[str, list[int]]:
    """group -> the row positions of `table` whose images AdaBN reads (at most max_images each, sorted).

    Its own generator, apart from the window positions', so which images are drawn depends on the table alone.
    """
    rng = np.random.default_rng(seed)
    table = table.reset_index(drop=True)
    keys = pd.Series([group_key(r, grouping) for r in table.itertuples(index=False)], index=table.index, dtype=str)
    drawn = {}
    for source, rows in table.groupby(keys, sort=True):
        picks = rng.choice(len(rows), min(max_images, len(rows)), replace=False)
        drawn[str(source)] = sorted(int(n) for n in rows.index[picks])
    return drawn


def adapt_batchnorm(
    table: pd.DataFrame,
    image_dir: Path,
    members: list[Member],
    *,
    windows: int = DEFAULT_WINDOWS,
    max_images: int = DEFAULT_IMAGES,
    scale_mode: str = "pixel-size",
    max_side: int | None = None,
    stain_reference: str | None = None,
    seed: int = 0,
    read: Callable[[object], np.ndarray] | None = None,
    grouping: str = "source-organ",
    mode: str = "all",
    min_images: int = 1,
) -> BatchNormAdaptation:
    """Fit every member's encoder BatchNorm statistics on each group's images of `table` (see module doc).

    stain_reference (--stain-reference without --stain-tta): images are Macenko-normalised, as the loop reads them.
    read(row) gives a drawn row's image (row.Index: its position in `table`; default: image_dir/<id>.tiff); one
    that raises is skipped with a warning, the other draws staying the same. mode (MODES): which members adapt on
    which groups; a group no member adapts on is not read at all, nor one with fewer than min_images images in the
    table (statistics of one or two images fit those images, not the group).
    """
    if windows < 1 or max_images < 1:
        raise ValueError(f"--adapt-bn-windows and --adapt-bn-images must be >= 1, got {windows}, {max_images}")
    transform: Callable[[np.ndarray], np.ndarray] | None = None
    if stain_reference is not None:
        from inference.stain import load_reference, normalise_stain

        reference = load_reference(stain_reference)
        transform = lambda image: normalise_stain(image, reference)  # noqa: E731
    if grouping not in GROUPINGS:
        raise ValueError(f"AdaBN grouping must be one of {GROUPINGS}, got {grouping!r}")
    adaptation = BatchNormAdaptation(members, grouping, mode)
    table = table.reset_index(drop=True)  # row numbers = positions, as the journal counts them
    sizes = Counter(group_key(r, grouping) for r in table.itertuples(index=False))  # test images per group
    for source, rows in drawn_rows(table, max_images, seed, grouping).items():
        if not any(adaptation.wanted(m, source) for m in adaptation.adaptable()):
            adaptation.states[source] = {}
            continue
        group_size = sizes[source]
        if group_size < min_images:
            adaptation.states[source] = {}
            note = (f"--adapt-bn: {source}: {group_size} image(s), fewer than --adapt-bn-min-images {min_images}: "
                    "left as trained")
            adaptation.notes.append(note)
            log.info(note)
            continue
        began = time.perf_counter()
        chosen = table.iloc[rows]
        per_image = max(2, math.ceil(windows / len(chosen)))  # batch statistics need 2+ windows
        used = [0]

        def batches(chosen: pd.DataFrame = chosen, per_image: int = per_image, used: list[int] = used,
                    source: str = source) -> Iterable[tuple[Member, torch.Tensor]]:
            for row in chosen.itertuples():
                try:
                    image = read(row) if read is not None else read_image(image_dir / f"{row.id}.tiff")
                except Exception as exc:  # a bad image costs its windows, never the run
                    log.warning("id %s: --adapt-bn: image skipped (%s: %s)", row.id, type(exc).__name__, exc)
                    continue
                if transform is not None:
                    image = transform(image)
                used[0] += 1
                rng = np.random.default_rng([seed + 1, int(row.Index)])  # this image's windows, whatever was skipped
                pixel_size, _ = image_pixel_size(row.pixel_size, row.organ, row.data_source)
                h, w = image.shape[:2]
                for member in adaptation.adaptable():
                    if not adaptation.wanted(member, source):
                        continue
                    p = member.predictor
                    if p.config.context > 1:
                        adaptation._skip(member, "context (MRN) checkpoints are not adapted")  # noqa: SLF001
                        continue
                    working = resize_image(image, *p.scale(h, w, scale_mode, pixel_size, max_side).size)
                    tiles = random_windows(working, p.config.tile_size, distinct_windows(working.shape[:2],
                                           p.config.tile_size, per_image), rng)
                    # near-equal batches of at least 2 windows (no batch of one left over at the end)
                    for batch in torch.tensor_split(tiles, max(1, len(tiles) // max(p.batch_size, 2))):
                        yield member, batch

        try:
            adaptation.fit(source, batches())
        except Exception as exc:  # anything else (reading, resizing a drawn image): this group stays as trained
            adaptation.restore()
            adaptation.states[source] = {}
            note = f"--adapt-bn: {source}: adaptation failed ({type(exc).__name__}: {str(exc)[:200]}); as trained"
            adaptation.notes.append(note)
            log.warning(note)
            continue
        log.info("--adapt-bn: %s: %d member(s) adapted on %d window(s) each from %d image(s) in %.1f s",
                 source, len(adaptation.states[source]), per_image * used[0], used[0],
                 time.perf_counter() - began)
    return adaptation
