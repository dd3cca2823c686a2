"""Whole-slide fixtures: demo slides and a deterministic TorchScript checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from checkpoints import make_torchscript_checkpoint
from torch import nn

SIDE = 2048


class DarkNet(nn.Module):
    """Binary FTU logits from local darkness: deterministic and smooth, so two predictions can be compared."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dark = -x.mean(1, keepdim=True)
        return 6.0 * (nn.functional.avg_pool2d(dark, 31, 1, 15, count_include_pad=False) + 1.2)


@pytest.fixture(scope="session")
def demo_slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 2048 px demo slides (kidney as OME-TIFF with SubIFDs, prostate as a generic tiled pyramid)."""
    from data_prep.make_demo import make_slides

    return make_slides(tmp_path_factory.mktemp("slides"), 2, seed=0, side=SIDE)


@pytest.fixture(scope="session")
def dark_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TorchScript binary checkpoint at 1 um/px."""
    folder = tmp_path_factory.mktemp("runs") / "dark" / "fold0"
    return make_torchscript_checkpoint(folder, DarkNet(), tile=128, task="binary", pixel_size=1.0).parent
