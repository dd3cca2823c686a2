"""Training losses: BCE + Dice (or Lovasz hinge) on one FTU logit."""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn


class SegmentationLoss(nn.Module):
    """Sum of BCE-with-logits and a region loss (Dice or Lovasz hinge) on one-channel logits."""

    def __init__(self, name: str = "bce_dice") -> None:
        super().__init__()
        self.name = name
        self.bce = nn.BCEWithLogitsLoss() if name.startswith("bce") else None
        if name.endswith("dice"):
            self.region: nn.Module = smp.losses.DiceLoss("binary", from_logits=True)
        elif name.endswith("lovasz"):
            self.region = smp.losses.LovaszLoss("binary", per_image=False)
        else:
            raise ValueError(f"unknown loss {name!r}; expected bce_dice, bce_lovasz or lovasz")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.region(logits, target)
        if self.bce is not None:
            loss = loss + self.bce(logits, target)
        return loss
