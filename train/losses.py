"""Training losses: BCE + Dice (or Lovasz hinge) on one FTU logit; target pixels equal to ignore_index (the ignore
band of pseudo-labels, data_prep.tileset.IGNORE_INDEX) count in none of them."""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from data_prep.tileset import IGNORE_INDEX


class SegmentationLoss(nn.Module):
    """Sum of BCE-with-logits and a region loss (Dice or Lovasz hinge) on one-channel logits.

    Targets are 0 / 1, or ignore_index where no loss may look (BCE averages over the other pixels; smp's Dice and
    Lovasz take the same ignore_index).
    """

    def __init__(self, name: str = "bce_dice", ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.name = name
        self.ignore_index = ignore_index
        self.bce = name.startswith("bce")
        if name.endswith("dice"):
            self.region: nn.Module = smp.losses.DiceLoss("binary", from_logits=True, ignore_index=ignore_index)
        elif name.endswith("lovasz"):
            self.region = smp.losses.LovaszLoss("binary", per_image=False, ignore_index=ignore_index)
        else:
            raise ValueError(f"unknown loss {name!r}; expected bce_dice, bce_lovasz or lovasz")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.region(logits, target)
        if self.bce:
            valid = target != self.ignore_index
            bce = F.binary_cross_entropy_with_logits(logits, torch.where(valid, target, 0.0), reduction="none")
            loss = loss + (bce * valid).sum() / valid.sum().clamp(min=1)
        return loss
