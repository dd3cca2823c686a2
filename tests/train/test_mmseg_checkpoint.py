"""AtomicCheckpointHook: the old best checkpoint outlives a kill while the new one is written, and a resume whose
checkpoint names a best that is gone goes on (mmengine's CheckpointHook removes the old best first)."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("mmcv", reason="mmcv is built from source by `make venv` (tools/build_mmcv_wheel.sh)")
from mmengine.fileio import get_file_backend  # noqa: E402
from mmengine.logging import MessageHub  # noqa: E402

from train.mmseg_ext.checkpoint import ATOMIC_BACKEND, AtomicCheckpointHook  # noqa: E402


class Killed(BaseException):
    """Stands in for a SIGKILL while a checkpoint is written."""


def fake_runner(work_dir: Path, hub_name: str) -> SimpleNamespace:
    """What CheckpointHook reads of a Runner; save_checkpoint writes the message hub through the hook's backend."""
    runner = SimpleNamespace(work_dir=str(work_dir), logger=logging.getLogger("checkpoint-test"), epoch=0, iter=0,
                             message_hub=MessageHub(hub_name), kill_on=None)

    def save_checkpoint(out_dir, filename, *args, backend_args=None, **kwargs) -> None:
        if runner.kill_on and filename.startswith(runner.kill_on):
            raise Killed(filename)
        buffer = io.BytesIO()
        torch.save({"message_hub": {"runtime_info": dict(runner.message_hub.runtime_info)}}, buffer)
        get_file_backend(out_dir, backend_args=backend_args).put(buffer.getvalue(), Path(out_dir) / filename)

    runner.save_checkpoint = save_checkpoint
    return runner


def hook() -> AtomicCheckpointHook:
    return AtomicCheckpointHook(interval=5, by_epoch=False, max_keep_ckpts=1, save_best="dice", rule="greater")


def step(checkpoint: AtomicCheckpointHook, runner: SimpleNamespace, iteration: int, dice: float) -> None:
    """The train loop at a validation iteration: the resume checkpoint, then the validation's best checkpoint."""
    runner.iter = iteration - 1
    checkpoint._save_checkpoint(runner)
    runner.iter = iteration
    checkpoint._save_best_checkpoint(runner, {"dice": dice})


def saved_hub(path: Path) -> dict:
    return torch.load(path, weights_only=True)["message_hub"]["runtime_info"]


def test_a_kill_while_the_new_best_is_written_keeps_the_old_best(tmp_path: Path) -> None:
    runner, checkpoint = fake_runner(tmp_path, "kill"), hook()
    assert checkpoint.backend_args == {"backend": ATOMIC_BACKEND}
    checkpoint.before_train(runner)
    step(checkpoint, runner, 5, 0.5)
    assert (tmp_path / "best_dice_iter_5.pth").is_file()
    runner.kill_on = "best_"
    with pytest.raises(Killed):
        step(checkpoint, runner, 10, 0.7)
    # the resume checkpoint on disk names the old best, and the old best is still there to load
    assert saved_hub(tmp_path / "iter_10.pth")["best_ckpt"] == str(tmp_path / "best_dice_iter_5.pth")
    assert (tmp_path / "best_dice_iter_5.pth").is_file()
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind

    resumed = fake_runner(tmp_path, "kill-resumed")  # the re-run resumes from iter_10.pth
    for key, value in saved_hub(tmp_path / "iter_10.pth").items():
        resumed.message_hub.update_info(key, value)
    again = hook()
    again.before_train(resumed)
    assert again.best_ckpt_path == str(tmp_path / "best_dice_iter_5.pth")
    step(again, resumed, 15, 0.8)  # a better one, written whole: the old best goes only now
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["best_dice_iter_15.pth", "iter_15.pth"]
    assert saved_hub(tmp_path / "iter_15.pth")["best_ckpt"] == str(tmp_path / "best_dice_iter_15.pth")


def test_resume_goes_on_when_the_named_best_is_gone(tmp_path: Path) -> None:
    """A folder left by mmengine's hook: the resume checkpoint names best_5, which was removed; best_10 was saved."""
    runner, checkpoint = fake_runner(tmp_path, "before"), hook()
    checkpoint.before_train(runner)
    step(checkpoint, runner, 5, 0.5)
    runner.iter = 9
    checkpoint._save_checkpoint(runner)  # iter_10.pth names best_dice_iter_5
    runner.message_hub.update_info("best_score", 0.7)
    runner.save_checkpoint(str(tmp_path), "best_dice_iter_10.pth", backend_args=checkpoint.backend_args)
    (tmp_path / "best_dice_iter_5.pth").unlink()

    resumed = fake_runner(tmp_path, "resumed")
    for key, value in saved_hub(tmp_path / "iter_10.pth").items():
        resumed.message_hub.update_info(key, value)
    again = hook()
    again.before_train(resumed)
    assert again.best_ckpt_path == str(tmp_path / "best_dice_iter_10.pth")
    assert resumed.message_hub.get_info("best_score") == 0.7
    step(again, resumed, 15, 0.6)  # not better than 0.7: best_10 stays the best
    assert resumed.message_hub.get_info("best_ckpt") == str(tmp_path / "best_dice_iter_10.pth")

    (tmp_path / "best_dice_iter_10.pth").unlink()  # no best file at all: the next validation saves one
    lost = fake_runner(tmp_path, "lost")
    for key, value in saved_hub(tmp_path / "iter_15.pth").items():
        lost.message_hub.update_info(key, value)
    third = hook()
    third.before_train(lost)
    assert third.best_ckpt_path is None
    step(third, lost, 20, 0.1)
    assert (tmp_path / "best_dice_iter_20.pth").is_file()


def test_last_checkpoint_is_written_atomically_before_the_old_checkpoint_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill while work/last_checkpoint is written leaves the previous name (mmengine's open(..., 'w') leaves '')
    and the checkpoint it names (mmengine removes the one beyond max_keep_ckpts first)."""
    import os

    from inference import atomic

    runner, checkpoint = fake_runner(tmp_path, "last"), hook()
    checkpoint.before_train(runner)
    step(checkpoint, runner, 5, 0.5)
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "iter_5.pth")

    replace = os.replace

    def killed_at_last_checkpoint(source, target) -> None:
        if Path(target).name == "last_checkpoint":
            raise Killed(target)
        replace(source, target)

    monkeypatch.setattr(atomic.os, "replace", killed_at_last_checkpoint)
    runner.iter = 9
    with pytest.raises(Killed):
        checkpoint._save_checkpoint(runner)
    assert (tmp_path / "iter_10.pth").is_file()  # the checkpoint itself was written before its name
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "iter_5.pth")
    assert (tmp_path / "iter_5.pth").is_file()  # what it names is still there to resume from
    assert not list(tmp_path.glob(".last_checkpoint*"))
    monkeypatch.undo()
    runner.iter = 14
    checkpoint._save_checkpoint(runner)  # max_keep_ckpts=1: iter_10 goes once iter_15 is named
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "iter_15.pth")
    # iter_5's removal was due when the kill came: it stays behind, named by nothing
    assert sorted(p.name for p in tmp_path.glob("iter_*.pth")) == ["iter_15.pth", "iter_5.pth"]
    with open(tmp_path / "other.txt", "w") as handle:  # the builtin open() is untouched after the hook's write
        handle.write("x")
    from mmengine.hooks import checkpoint_hook

    assert "open" not in vars(checkpoint_hook)


def test_checkpoints_to_the_atomic_backend_stream_to_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runner.save_checkpoint's mmengine function serialises into a BytesIO and copies it (the checkpoint twice in
    memory); inside the hook's saves it is replaced for our backend by torch.save into the atomic writer."""
    from mmengine.runner import runner as mmengine_runner

    from train.mmseg_ext.checkpoint import _streamed_checkpoints

    buffered = []

    def mmengine_save(checkpoint, filename, file_client_args=None, backend_args=None) -> None:
        buffered.append(filename)

    monkeypatch.setattr(mmengine_runner, "save_checkpoint", mmengine_save)
    with _streamed_checkpoints():
        mmengine_runner.save_checkpoint({"w": torch.ones(3)}, str(tmp_path / "ours.pth"),
                                        backend_args=dict(backend=ATOMIC_BACKEND))
        mmengine_runner.save_checkpoint({"w": torch.ones(3)}, str(tmp_path / "other.pth"), backend_args=None)
    assert torch.load(tmp_path / "ours.pth", weights_only=True)["w"].sum() == 3
    assert buffered == [str(tmp_path / "other.pth")]  # another backend keeps mmengine's function
    assert mmengine_runner.save_checkpoint is mmengine_save  # restored after the save
    assert not list(tmp_path.glob(".*tmp*"))
