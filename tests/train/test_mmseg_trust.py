"""The mmseg trust check: only files that resolve inside the run's work folder get torch's full unpickler."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmengine")
from mmengine.runner import CheckpointLoader  # noqa: E402

from train.mmseg_ext.checkpoint import trust_checkpoints_in  # noqa: E402


def test_paths_that_leave_the_work_folder_stay_weights_only(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    payload = {"meta": argparse.Namespace(step=1)}  # an object: the weights-only unpickler refuses it
    torch.save(payload, work / "own.pth")
    torch.save(payload, tmp_path / "outside.pth")
    (work / "link.pth").symlink_to(tmp_path / "outside.pth")
    trust_checkpoints_in(work)
    assert CheckpointLoader.load_checkpoint(str(work / "own.pth"))["meta"].step == 1
    for sneaky in (f"{work}/../outside.pth", str(work / "link.pth")):  # both match the string prefix
        with pytest.raises(pickle.UnpicklingError):
            CheckpointLoader.load_checkpoint(sneaky)
