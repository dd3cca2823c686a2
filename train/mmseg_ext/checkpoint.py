"""Build mmseg segmentors from configs; load mmengine checkpoints deliberately under torch's weights_only default;
write them atomically, the new best before the old best is removed, and resume past a best that was lost.

mmengine's CheckpointHook writes checkpoints in place (a kill leaves a torn file that last_checkpoint names); on a new
best it removes the old best before writing the new one while the resume checkpoint on disk still names the old one,
and past max_keep_ckpts it removes the oldest checkpoint before writing the next while last_checkpoint still names
it: a kill in between, and every resume ends in FileNotFoundError. It writes work/last_checkpoint (the name of the
checkpoint a resume loads) with a plain open(..., "w"): a kill between the truncation and the write leaves it empty,
and the resume fails on the path ''. AtomicCheckpointHook (configs get it through train.mmseg_train.prepare_config)
writes checkpoints through inference.atomic (torch.save streamed into the temporary file: mmengine's own
save_checkpoint holds each checkpoint twice in memory) and last_checkpoint too, removes an old checkpoint
(best or kept) only after its successor and the files naming it are on disk, and on resume adopts the newest best
file on disk when the one the checkpoint names is gone.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.hooks import checkpoint_hook as mmengine_checkpoint_hook
from mmengine.registry import HOOKS, init_default_scope
from mmengine.runner import CheckpointLoader, load_checkpoint
from mmengine.runner import runner as mmengine_runner
from torch import nn

from inference.atomic import atomic_write, write_bytes, write_text

ATOMIC_BACKEND = "atomic_local"


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose writes go through the one atomic writer (temporary file, fsync, rename)."""

    def put(self, obj: bytes, filepath: str | Path) -> None:
        write_bytes(filepath, obj)

    def put_text(self, obj: str, filepath: str | Path, encoding: str = "utf-8") -> None:
        write_text(filepath, obj)


register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)


LAST_CHECKPOINT = "last_checkpoint"  # mmengine's file naming the checkpoint a resume loads


@contextlib.contextmanager
def _atomic_last_checkpoint() -> Iterator[None]:
    """While it is open, mmengine's checkpoint hook writes last_checkpoint through inference.atomic.

    CheckpointHook._save_checkpoint_with_step opens the file with the builtin open() (no backend to replace), so the
    name `open` in that module is shadowed for the call: last_checkpoint opened for writing goes to atomic_write,
    every other open() is the builtin. tests/train/test_mmseg_checkpoint.py fails if mmengine stops writing it so.
    """
    def opener(file, mode="r", *args, **kwargs):
        if os.path.basename(str(file)) == LAST_CHECKPOINT and mode == "w":
            return atomic_write(file)
        return builtins.open(file, mode, *args, **kwargs)

    mmengine_checkpoint_hook.open = opener
    try:
        yield
    finally:
        del mmengine_checkpoint_hook.open


@contextlib.contextmanager
def _streamed_checkpoints() -> Iterator[None]:
    """While it is open, Runner.save_checkpoint to our atomic backend streams torch.save into the atomic writer's
    temporary file. mmengine's save_checkpoint serialises into a BytesIO and copies it out with getvalue(), so the
    checkpoint is held twice in memory: for UperNet-ConvNeXt-XL (350M weights and their AdamW state, 4.2 GB) that
    pushed the CPU rehearsal past 12 GiB. Other backends keep mmengine's function."""
    original = mmengine_runner.save_checkpoint

    def save(checkpoint, filename, file_client_args=None, backend_args=None) -> None:
        if file_client_args is not None or (backend_args or {}).get("backend") != ATOMIC_BACKEND:
            return original(checkpoint, filename, file_client_args=file_client_args, backend_args=backend_args)
        with atomic_write(filename, "wb", suffix=".pth") as handle:
            torch.save(checkpoint, handle)

    mmengine_runner.save_checkpoint = save
    try:
        yield
    finally:
        mmengine_runner.save_checkpoint = original


class _DeferredRemoval:
    """A file backend whose remove() only records the path: the hook removes it once the new best is on disk."""

    def __init__(self, backend: LocalBackend) -> None:
        self._backend, self.removed = backend, []

    def remove(self, filepath: str | Path) -> None:
        self.removed.append(str(filepath))

    def __getattr__(self, name: str):
        return getattr(self._backend, name)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """CheckpointHook that writes atomically, never removes the old best before the new one is saved, and resumes
    when the best checkpoint the resume checkpoint names is missing (the newest best file on disk, else none)."""

    def __init__(self, *args, backend_args: dict | None = None, **kwargs) -> None:
        super().__init__(*args, backend_args=backend_args or dict(backend=ATOMIC_BACKEND), **kwargs)

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if self.save_best is None or len(self.key_indicators) != 1:
            return
        named = self.best_ckpt_path
        if named is None or self.file_backend.isfile(named):
            return
        best = _newest_best(Path(self.out_dir), self.key_indicators[0])
        hub = runner.message_hub
        if best is None:
            runner.logger.warning(f"the best checkpoint {named} is missing: the next validation saves a new best")
            self.best_ckpt_path = None
            hub.runtime_info.pop("best_ckpt", None)
            hub.runtime_info.pop("best_score", None)
            return
        score = CheckpointLoader.load_checkpoint(str(best), map_location="cpu")["message_hub"]["runtime_info"]
        runner.logger.warning(f"the best checkpoint {named} is missing: resuming with {best.name}")
        self.best_ckpt_path = str(best)
        hub.update_info("best_ckpt", str(best))
        if "best_score" in score:
            hub.update_info("best_score", score["best_score"])

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        """mmengine's, with work/last_checkpoint written atomically (a kill leaves the previous name, never '') and the
        checkpoint beyond max_keep_ckpts removed only after the new one and last_checkpoint naming it are written
        (mmengine removes it first: a kill in between leaves last_checkpoint naming a removed file)."""
        backend = self.file_backend
        deferred = _DeferredRemoval(backend)
        self.file_backend = deferred
        try:
            with _atomic_last_checkpoint(), _streamed_checkpoints():
                super()._save_checkpoint_with_step(runner, step, meta)
        finally:
            self.file_backend = backend
        for path in deferred.removed:
            if path != str(self.last_ckpt) and is_main_process() and backend.isfile(path):
                backend.remove(path)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        """mmengine's best-checkpoint logic, with the old best removed last (after the new best and the resume
        checkpoint naming it are written)."""
        backend = self.file_backend
        deferred = _DeferredRemoval(backend)
        self.file_backend = deferred
        try:
            with _streamed_checkpoints():
                super()._save_best_checkpoint(runner, metrics)
        finally:
            self.file_backend = backend
        current = {str(self.best_ckpt_path)} | {str(p) for p in getattr(self, "best_ckpt_path_dict", {}).values()}
        for path in deferred.removed:
            if path not in current and is_main_process() and backend.isfile(path):
                backend.remove(path)
                runner.logger.info(f"The previous best checkpoint {path} is removed")


def _newest_best(folder: Path, key: str) -> Path | None:
    """The best_<key>_iter_N.pth (or _epoch_N) with the largest N in folder, if any."""
    def step(path: Path) -> int:
        match = re.search(r"_(\d+)\.pth$", path.name)
        return int(match.group(1)) if match else -1

    found = sorted(folder.glob(f"best_{key}_*.pth"), key=step)
    return found[-1] if found else None


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
