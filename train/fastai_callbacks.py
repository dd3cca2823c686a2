"""The fastai trainer's callbacks and metric: submission-path validation, the training clock, resumable and atomic
checkpoints (best.pth, last.pth), weight snapshots for averaging, encoder BatchNorm freezing and an appending CSV log."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from fastai.callback.core import Callback, CancelTrainException, CancelValidException
from fastai.callback.progress import CSVLogger
from fastai.callback.schedule import ParamScheduler
from fastai.callback.tracker import SaveModelCallback
from fastai.data.load import DataLoader
from fastai.learner import Learner, Metric, Recorder, load_model, save_model
from fastai.torch_core import distrib_barrier, get_model, num_distrib, rank_distrib
from torch import nn

from inference.atomic import atomic_write, write_json
from inference.checkpoint import CheckpointConfig
from inference.engine.ensemble import Member
from inference.engine.predictor import Predictor
from train.averaging import SnapshotPool
from train.run_folder import inside
from train.validation import ValidationImage, kernel_validation, saved_validation, validate_into

STATE = "state.json"
CHECKPOINTS = "checkpoints"
VALIDATIONS = "validations"  # under CHECKPOINTS: KernelDice's kept validations


def save_learner(learn: Learner, path: Path, with_opt: bool) -> Path:
    """fastai's save_model (model, and optimizer when with_opt) through the one atomic writer, on rank 0 only.

    fastai's Learner.save writes in place: a kill mid-write leaves a torn best.pth that the next resume reloads.
    """
    if rank_distrib() == 0:
        with atomic_write(path, "wb", suffix=".pth") as handle:
            save_model(handle, learn.model, getattr(learn, "opt", None), with_opt=with_opt)
    return path


def load_learner_state(learn: Learner, path: Path, folder: Path, with_opt: bool) -> None:
    """Reload a checkpoint this run wrote, with torch's weights-only unpickler, refusing paths that leave `folder`.

    fastai's SaveModelCallback reloads best.pth with the full unpickler (weights_only=False): a file planted or
    linked into the run folder could run code. Our checkpoints hold tensors, numbers and lists only.
    """
    if not inside(path, folder):
        raise ValueError(f"{path} resolves to {Path(path).resolve()}, outside the run folder {folder}: not loading it")
    load_model(path, learn.model, learn.opt, with_opt=with_opt, device=getattr(learn.dls, "device", None),
               weights_only=True)


class Validation:
    """fold k's original images, scored by the submission path with the model as it is now."""

    def __init__(self, table: pd.DataFrame, image_dir: Path, config: CheckpointConfig, device: torch.device) -> None:
        self.table, self.image_dir, self.config, self.device = table, image_dir, config, device

    def __call__(
        self, model: torch.nn.Module, on_image: Callable[[ValidationImage], None] | None = None, progress: bool = False
    ) -> dict:
        """kernel_validation of `model` (put in eval mode) as the checkpoint this run writes."""
        name = f"{self.config.name}/fold{self.config.fold}"
        predictor = Predictor(self.config, model.eval(), self.device, name=name)
        return kernel_validation([Member(predictor)], self.table, self.image_dir, on_image=on_image, progress=progress)


class KernelDice(Metric):
    """The monitored metric: Dice of the submission path on fold k's whole images, once per validation.

    keep: a folder where rank 0 keeps each validation's result and out-of-fold maps (train.validation.validate_into,
    KEEP/epoch_<e>/) and then only the best one's (highest Dice, the earliest epoch on a tie, as BestCheckpoint
    ranks them), so the trainer writes the fold's metrics.json and oof/ from it instead of validating again.
    """

    def __init__(self, validation: Validation, keep: Path | None = None, max_side: int = 512) -> None:
        self.validation, self.keep, self.max_side = validation, keep, max_side
        self.learn: Learner | None = None
        self.result: dict | None = None

    def reset(self) -> None:
        self.result = None

    def accumulate(self, learn: Learner) -> None:
        self.learn = learn  # the whole images are predicted in `value`, not batch by batch

    @property
    def value(self) -> float | None:
        if self.result is None and self.learn is not None:
            model = get_model(self.learn.model)
            if self.keep is None or rank_distrib() != 0:
                self.result = self.validation(model)
            else:  # the epoch as history.csv numbers it (EpochOffset)
                folder = kept_validation(self.keep, int(self.learn.recorder.log[0]))
                self.result = validate_into(folder, partial(self.validation, model), self.max_side)
                keep_best_validation(self.keep)
        return None if self.result is None else self.result["dice"]

    @property
    def name(self) -> str:
        return "dice"


def kept_validation(keep: Path, epoch: int) -> Path:
    """The folder KernelDice keeps epoch `epoch`'s validation in."""
    return Path(keep) / f"epoch_{int(epoch)}"


def keep_best_validation(keep: Path) -> None:
    """Remove every kept validation but the best finished one (highest Dice, earliest epoch on a tie)."""
    finished = []
    for folder in Path(keep).glob("epoch_*"):
        saved = saved_validation(folder)
        if saved is not None:
            finished.append((-float(saved[0]["dice"]), int(folder.name.split("_")[1]), folder))
    best = min(finished)[2] if finished else None
    for folder in Path(keep).glob("epoch_*"):
        if folder != best:
            shutil.rmtree(folder, ignore_errors=True)


class TrainingClock(Callback):
    """Training time budget: epoch e trains until (e + 1) / E of the budget is spent; validation is not counted.

    The epoch's training ends with fastai's CancelTrainException; the Recorder would then drop the epoch's
    train_loss, so after_cancel_train (ordered after the Recorder's) keeps it: the epoch did train. The first
    epoch's loader is effectively endless; later ones are sized at twice the previous epoch, and one that runs
    out before its share of time simply hands the rest to the next epoch. The progress bar's total follows the
    clock: the batches so far plus those the rest of the epoch's share holds at the pace so far.
    """

    order = Recorder.order + 1

    def __init__(
        self, minutes: float, epochs: int, offset: int = 0, spent: float = 0.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.budget, self.epochs, self.offset, self.spent = minutes * 60.0, epochs, offset, spent
        self.clock = clock  # injectable: tests drive the budget with a fake clock
        self._last = clock()

    @property
    def fraction(self) -> float:
        """Share of the budget spent so far, in [0, 1]: the position on the LR schedule."""
        return min(1.0, self.spent / self.budget)

    def before_train(self) -> None:
        self._last = self.clock()
        self._batches = 0
        self._epoch_start = self.spent

    def after_batch(self) -> None:
        if not self.training:
            return
        now = self.clock()
        self.spent += now - self._last
        self._last = now
        self._batches += 1
        if num_distrib() > 1:  # every rank follows rank 0's clock: the same LR and the same last batch
            clock = torch.tensor([self.spent], dtype=torch.float64, device=next(self.learn.model.parameters()).device)
            torch.distributed.broadcast(clock, 0)
            self.spent = float(clock.item())
        epoch_end = self.budget * (self.epoch + self.offset + 1) / self.epochs
        if self.spent >= epoch_end:
            raise CancelTrainException
        self._show_total(epoch_end)

    def _show_total(self, epoch_end: float) -> None:
        """Set the progress bar's total to the batches this epoch's share of the clock will hold at today's pace."""
        pbar = getattr(getattr(self.learn, "progress", None), "pbar", None)
        per_batch = (self.spent - self._epoch_start) / self._batches
        if pbar is not None and per_batch > 0:
            pbar.total = self._batches + max(1, math.ceil((epoch_end - self.spent) / per_batch))

    def after_epoch(self) -> None:
        """Size the next epoch's loader at twice this epoch's batches, so its progress bar shows a real total."""
        loader = self.dls.train
        if isinstance(loader, DataLoader) and not hasattr(loader, "dl") and self._batches:  # not DistributedDL
            loader.n = 2 * self._batches * loader.bs

    def after_cancel_train(self) -> None:
        self.recorder.cancel_train = False


class ClockScheduler(ParamScheduler):
    """fastai's ParamScheduler positioned by the share of the time budget spent instead of the batch count."""

    def __init__(self, scheds: dict, clock: TrainingClock) -> None:
        super().__init__(scheds)
        self.clock = clock

    def before_batch(self) -> None:
        self._update_val(self.clock.fraction)


class EpochOffset(Callback):
    """Number the epochs of a resumed fit from where the interrupted one stopped (history.csv, progress table)."""

    order = Recorder.order + 1

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def before_epoch(self) -> None:
        self.recorder.log[0] = self.epoch + self.offset


class BestCheckpoint(SaveModelCallback):
    """fastai's SaveModelCallback writing best.pth atomically and reloading it weights-only from inside the run folder."""

    def __init__(self, folder: Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.folder = Path(folder)

    def _save(self, name: str) -> None:
        self.last_saved_path = save_learner(self.learn, self.folder / CHECKPOINTS / f"{name}.pth", self.with_opt)

    def after_fit(self, **kwargs) -> None:
        """Load the best epoch's weights (as SaveModelCallback does, but weights-only)."""
        if self.at_end:
            self._save(self.fname)
        elif not self.every_epoch:
            distrib_barrier()
            load_learner_state(self.learn, self.folder / CHECKPOINTS / f"{self.fname}.pth", self.folder, self.with_opt)


class ResumeCheckpoint(Callback):
    """After every epoch: save model + optimizer as checkpoints/last.pth and the progress in checkpoints/state.json."""

    order = SaveModelCallback.order + 1

    def __init__(
        self,
        folder: Path,
        offset: int,
        record: dict,
        tracker: SaveModelCallback | None,
        clock: TrainingClock | None = None,
    ) -> None:
        self.folder, self.offset, self.record, self.tracker, self.clock = folder, offset, record, tracker, clock

    def after_epoch(self) -> None:
        save_learner(self.learn, self.folder / CHECKPOINTS / "last.pth", with_opt=True)  # never half a last.pth
        if rank_distrib() == 0:
            best = None if self.tracker is None else float(self.tracker.best)
            spent = None if self.clock is None else self.clock.spent
            state = dict(self.record, epochs_done=self.epoch + self.offset + 1, best=best, seconds_trained=spent)
            write_json(self.folder / CHECKPOINTS / STATE, state)
        distrib_barrier()  # other ranks may load best.pth next: wait until rank 0 has written it


class WeightSnapshots(Callback):
    """After every epoch: offer the weights to a SnapshotPool (ranked by the epoch's validation Dice, or by epoch)."""

    order = SaveModelCallback.order + 1

    def __init__(self, pool: SnapshotPool, offset: int = 0) -> None:
        self.pool, self.offset = pool, offset

    def after_epoch(self) -> None:
        score = None
        if self.pool.rule == "dice":
            names = list(self.recorder.metric_names[1:])
            score = float(self.recorder.values[-1][names.index("dice")])
        if rank_distrib() == 0:
            self.pool.offer(self.epoch + self.offset, get_model(self.learn.model).state_dict(), score)
        distrib_barrier()


class SkipValidation(Callback):
    """fold -1 has no validation tiles: skip fastai's validation pass instead of iterating an empty loader."""

    order = Recorder.order + 5

    def before_validate(self) -> None:
        raise CancelValidException


class AppendingCSVLogger(CSVLogger):
    """fastai's CSVLogger that writes the header only into a new file, so a resumed run continues history.csv."""

    def before_fit(self) -> None:
        path = self.path / self.fname
        if not (self.append and path.is_file() and path.stat().st_size > 0):
            super().before_fit()
            return
        self.file = path.open("a")
        self.old_logger, self.learn.logger = self.logger, self._write_line


class FreezeEncoderBN(Callback):
    """Keep the encoder's BatchNorm layers in eval mode (pretrained running statistics) while training.

    At 2-4 images per GPU, batch statistics are noise; the affine weights still train. Pairs with a
    batch-independent decoder norm (decoder_norm="groupnorm").
    """

    def before_train(self) -> None:
        for module in self.learn.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and _in_encoder(self.learn.model, module):
                module.eval()


def _in_encoder(model: nn.Module, module: nn.Module) -> bool:
    encoder = getattr(getattr(model, "module", model), "encoder", None)
    return encoder is not None and any(m is module for m in encoder.modules())
