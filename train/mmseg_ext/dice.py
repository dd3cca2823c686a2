"""Validate an mmseg run the way the Kaggle kernel predicts: whole validation images through the inference engine.

KernelValLoop replaces mmseg's ValLoop. mmseg's loop predicts the validation tiles and scores mIoU on them; the
kernel never sees tiles: it resamples each whole image to the checkpoint's scale (config.json), slides over it,
blends, picks the majority class and thresholds. So the loop wraps the live segmentor as the module the TorchScript
export traces (train.export.SegmentorLogits), puts it in an inference.engine.predictor.Predictor with the CheckpointConfig
the run will write, and scores it with train.validation.kernel_validation. The tiles are not predicted at all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from mmengine.dist import broadcast_object_list, get_world_size, is_main_process
from mmengine.model import is_model_wrapper
from mmengine.runner import BaseLoop
from mmseg.registry import LOOPS
from torch import nn

from inference.checkpoint import CheckpointConfig
from inference.engine.ensemble import Member
from inference.engine.predictor import Predictor
from train.export import SegmentorLogits
from train.run_folder import validation_rows
from train.validation import ValidationImage, kernel_validation


def segmentor_predictor(segmentor: nn.Module, config: CheckpointConfig, batch_size: int = 4) -> Predictor:
    """The live segmentor as the inference engine sees its export: a logits module inside a Predictor."""
    device = next(segmentor.parameters()).device
    return Predictor(config, SegmentorLogits(segmentor).eval(), device, batch_size=batch_size)


def kernel_dice(
    segmentor: nn.Module,
    config: CheckpointConfig,
    rows: pd.DataFrame,
    image_dir: Path,
    on_image: Callable[[ValidationImage], None] | None = None,
    batch_size: int = 4,
    progress: bool = True,
) -> dict:
    """kernel_validation of a segmentor on whole images (eval mode and memory format restored afterwards)."""
    was_training = segmentor.training
    segmentor.eval()
    try:
        predictor = segmentor_predictor(segmentor, config, batch_size)
        return kernel_validation([Member(predictor)], rows, Path(image_dir), on_image=on_image, progress=progress)
    finally:
        # the Predictor moves a CUDA model to channels_last in place; training keeps its own layout
        segmentor.to(memory_format=torch.contiguous_format)
        segmentor.train(was_training)


def scalar_metrics(result: dict) -> dict[str, float]:
    """Flat metrics for mmengine's logger and CheckpointHook: dice, dice_<organ>, dice_<data source>."""
    return {
        "dice": float(result["dice"]),
        **{f"dice_{k}": float(v) for k, v in result["per_organ"].items()},
        **{f"dice_{k}": float(v) for k, v in result.get("per_data_source", {}).items()},
    }


@LOOPS.register_module()
class KernelValLoop(BaseLoop):
    """Validation loop: Dice of whole validation images predicted as the kernel predicts them.

    The validation images are those of the val_dataloader's tiles (fold == k, source original), read whole from
    `data_dir`/train_images. `checkpoint` holds the fields of the CheckpointConfig the run writes as config.json
    (scale rule, pixel size, tile size, overlap, normalisation, threshold). The evaluator is unused: mmengine
    requires one next to a val_dataloader.
    """

    def __init__(self, runner, dataloader, evaluator, data_dir: str, checkpoint: dict, batch_size: int = 4) -> None:
        super().__init__(runner, dataloader)  # builds the (never iterated) tile loader: its dataset names the images
        self.data_dir = Path(data_dir)
        self.config = CheckpointConfig(**checkpoint)
        self.batch_size = batch_size
        image_ids = list(dict.fromkeys(self.dataloader.dataset.rows["image_id"].astype(str)))
        self.rows, _ = validation_rows(self.data_dir, image_ids)

    @property
    def image_dir(self) -> Path:
        return self.data_dir / "train_images"

    def run(self) -> dict:
        """Predict and score the validation images (rank 0), share the metrics with every rank, fire the hooks."""
        self.runner.call_hook("before_val")
        self.runner.call_hook("before_val_epoch")
        metrics = None
        if is_main_process():
            model = self.runner.model
            segmentor = model.module if is_model_wrapper(model) else model
            result = kernel_dice(segmentor, self.config, self.rows, self.image_dir, batch_size=self.batch_size)
            metrics = scalar_metrics(result)
        if get_world_size() > 1:
            holder = [metrics]
            broadcast_object_list(holder, src=0)
            metrics = holder[0]
        self.runner.call_hook("after_val_epoch", metrics=metrics)
        self.runner.call_hook("after_val")
        return metrics
