"""The competition metric: Dice between a predicted and a true binary mask, averaged over images."""

from __future__ import annotations

import numpy as np


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    """Dice coefficient of two binary masks; 1.0 when both are empty."""
    if pred.shape != true.shape:
        raise ValueError(f"dice: prediction shape {pred.shape} differs from truth shape {true.shape}")
    p, t = pred.astype(bool), true.astype(bool)
    denom = int(p.sum()) + int(t.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / denom
