"""Validate an mmseg run the way the Kaggle kernel predicts: whole validation images through the inference engine.

KernelValLoop replaces mmseg's ValLoop. mmseg's loop predicts the validation tiles and scores mIoU on them; the
kernel never sees tiles: it resamples each whole image to the checkpoint's scale (config.json), slides over it,
blends, picks the majority class and thresholds. So the loop wraps the live segmentor as the module the TorchScript
export traces (train.export.SegmentorLogits), puts it in an inference.engine.predictor.Predictor with the CheckpointConfig
the run will write, and scores it with train.validation.kernel_validation. The tiles are not predicted at all.

Each validation keeps its result and out-of-fold maps under WORK/validations/iter_<N>/ (result.json written last);
only the folder of the best checkpoint's validation is kept, so the trainer writes the fold's metrics.json and oof/
from it instead of predicting the validation images a second time (train.validation.saved_validation).
"""

from __future__ import annotations

import re
import shutil
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
from train.validation import ValidationImage, kernel_validation, validate_into

OOF_MAX_SIDE = 512  # longest side of the saved out-of-fold maps (the fastai trainer's default)
VALIDATIONS = "validations"  # under the run's work folder


def iteration_of(checkpoint: str) -> int:
    """Training iteration in an mmengine checkpoint name (iter_300.pth, best_dice_iter_300.pth)."""
    match = re.search(r"iter_(\d+)\.pth$", str(checkpoint))
    if match is None:
        raise ValueError(f"cannot read the iteration from checkpoint name {checkpoint}")
    return int(match.group(1))


def validation_folder(work_dir: str | Path, iteration: int) -> Path:
    """Where KernelValLoop keeps the validation at `iteration`: result.json and oof/ (index.csv, maps, masks)."""
    return Path(work_dir) / VALIDATIONS / f"iter_{int(iteration)}"


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

    def __init__(self, runner, dataloader, evaluator, data_dir: str, checkpoint: dict, batch_size: int = 4,
                 oof_max_side: int = OOF_MAX_SIDE) -> None:
        super().__init__(runner, dataloader)  # builds the (never iterated) tile loader: its dataset names the images
        self.data_dir = Path(data_dir)
        self.config = CheckpointConfig(**checkpoint)
        self.batch_size = batch_size
        self.oof_max_side = oof_max_side
        image_ids = list(dict.fromkeys(self.dataloader.dataset.rows["image_id"].astype(str)))
        self.rows, _ = validation_rows(self.data_dir, image_ids)

    @property
    def image_dir(self) -> Path:
        return self.data_dir / "train_images"

    def run(self) -> dict:
        """Predict and score the validation images (rank 0), keep the result and OOF maps, share the metrics with every
        rank, fire the hooks (CheckpointHook saves a new best), then keep only the best validation's folder."""
        self.runner.call_hook("before_val")
        self.runner.call_hook("before_val_epoch")
        metrics = None
        if is_main_process():
            model = self.runner.model
            segmentor = model.module if is_model_wrapper(model) else model
            result = validate_into(
                validation_folder(self.runner.work_dir, self.runner.iter),
                lambda on_image: kernel_dice(segmentor, self.config, self.rows, self.image_dir,
                                             batch_size=self.batch_size, on_image=on_image),
                self.oof_max_side,
            )
            metrics = scalar_metrics(result)
        if get_world_size() > 1:
            holder = [metrics]
            broadcast_object_list(holder, src=0)
            metrics = holder[0]
        self.runner.call_hook("after_val_epoch", metrics=metrics)
        self.runner.call_hook("after_val")
        if is_main_process():
            self._keep_best_only()
        return metrics

    def _keep_best_only(self) -> None:
        """Remove every kept validation but the best checkpoint's (the latest's when no best is recorded)."""
        best = self.runner.message_hub.get_info("best_ckpt")
        keep = validation_folder(self.runner.work_dir, iteration_of(best) if best else self.runner.iter)
        for folder in (Path(self.runner.work_dir) / VALIDATIONS).glob("iter_*"):
            if folder != keep:
                shutil.rmtree(folder, ignore_errors=True)
