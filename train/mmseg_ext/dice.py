"""Full-image validation Dice for mmseg runs, through the same `train.validation.full_image_dice` as the fastai trainer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS
from torch import nn

from inference.ensemble import majority_class
from train.export import SegmentorLogits
from train.validation import full_image_dice

RULES = ("majority", "foreground")


def ftu_predictor(
    segmentor: nn.Module, batch_size: int = 8, rule: str = "majority"
) -> Callable[[np.ndarray], np.ndarray]:
    """A `predict` for full_image_dice: uint8 (N,H,W,3) RGB tiles of one image -> FTU probability (N,H,W).

    rule "majority", as the inference engine (inference.ensemble): the softmax probability of the image's majority
    class, the non-background class covering most argmax pixels over all its tiles. rule "foreground":
    1 - p(background), blind to the organ class, to tell segmentation errors from organ-class errors.
    """
    if rule not in RULES:
        raise ValueError(f"rule {rule!r} not in {RULES}")
    logits_model = SegmentorLogits(segmentor).eval()
    preprocessor = segmentor.data_preprocessor  # mean/std on the 0-255 scale, RGB order (bgr_to_rgb=False)
    mean, std = preprocessor.mean, preprocessor.std
    device = mean.device

    @torch.no_grad()
    def predict(images: np.ndarray) -> np.ndarray:
        probs = []
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start : start + batch_size]).to(device).permute(0, 3, 1, 2).float()
            probs.append(logits_model((x - mean) / std).softmax(dim=1).cpu().numpy())
        tiles = np.concatenate(probs)
        if rule == "foreground":
            return 1.0 - tiles[:, 0]
        return tiles[:, majority_class(list(tiles), [1.0] * len(tiles))]

    return predict


def segmentor_dice(
    segmentor: nn.Module, valid_index: pd.DataFrame, tiles_dir: Path, batch_size: int = 8, rule: str = "majority"
) -> dict:
    """Full-image Dice of a segmentor on the validation rows of a tile index (eval mode, restored afterwards)."""
    was_training = segmentor.training
    segmentor.eval()
    try:
        # full_image_dice predicts one image at a time in chunks of its batch_size: a chunk as large as the whole
        # index hands `predict` every tile of an image at once, which the majority class needs
        return full_image_dice(
            ftu_predictor(segmentor, batch_size, rule), valid_index, tiles_dir, batch_size=len(valid_index)
        )
    finally:
        segmentor.train(was_training)


@HOOKS.register_module()
class FullImageDiceHook(Hook):
    """Add full-image Dice ("dice", "dice_<organ>") to the validation metrics, so CheckpointHook keeps the best by it."""

    # after RuntimeInfoHook (VERY_HIGH), before LoggerHook (BELOW_NORMAL) and CheckpointHook (VERY_LOW)
    priority = "ABOVE_NORMAL"

    def __init__(self, batch_size: int = 8) -> None:
        self.batch_size = batch_size

    def after_val_epoch(self, runner, metrics: dict | None = None) -> None:
        dataset = runner.val_dataloader.dataset
        segmentor = runner.model.module if is_model_wrapper(runner.model) else runner.model
        result = segmentor_dice(segmentor, dataset.rows, dataset.tiles_dir, self.batch_size)
        scalars = {"dice": result["dice"], **{f"dice_{k}": v for k, v in result["per_organ"].items()}}
        for key, value in scalars.items():
            runner.message_hub.update_scalar(f"val/{key}", value)
        if metrics is not None:
            metrics.update(scalars)
