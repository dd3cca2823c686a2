"""Weight averaging for the mmseg trainer: keep the weights of the K best validations (or the last K) on disk.

WeightAverageHook offers the segmentor's weights to a train.averaging.SnapshotPool after each validation
(average_by "dice", ranked by the whole-image Dice of KernelValLoop) or at each checkpoint interval and the last
iteration (average_by "last", which also works at fold -1, where nothing is validated; a time budget rescales that
interval, so a budgeted run still spreads its snapshots over the run). train.mmseg_train.finish loads
the pool's mean into the segmentor and validates it again before exporting it as the fold's model.
"""

from __future__ import annotations

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS

from train.averaging import SnapshotPool


def _state(runner) -> dict:
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    return model.state_dict()


@HOOKS.register_module()
class WeightAverageHook(Hook):
    """Offer the weights at every validation (by "dice") or checkpoint interval (by "last") to a SnapshotPool."""

    # after TimeBudgetHook (80) has fitted max_iters and the intervals, before CheckpointHook (90)
    priority = 85

    def __init__(self, folder: str, k: int, by: str = "dice") -> None:
        self.pool = SnapshotPool(folder, k, by)

    def before_train(self, runner) -> None:
        self.checkpoint_hook = next((h for h in runner.hooks if isinstance(h, CheckpointHook)), None)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.pool.rule != "last":
            return
        done = runner.iter + 1
        interval = self.checkpoint_hook.interval if self.checkpoint_hook else runner.train_loop.val_interval
        if (done % interval == 0 or done == runner.train_loop.max_iters) and is_main_process():
            self.pool.offer(done, _state(runner))

    def after_val_epoch(self, runner, metrics: dict | None = None) -> None:
        if self.pool.rule == "dice" and is_main_process():
            self.pool.offer(runner.iter, _state(runner), float(metrics["dice"]))
