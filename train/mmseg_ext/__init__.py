"""Our additions to mmseg's registries (dataset, pipeline steps, validation loop, time-budget, weight-averaging and
atomic checkpoint hooks), loaded by custom_imports."""

from train.mmseg_ext import averaging, checkpoint, dataset, dice, time_budget, transforms

__all__ = ["averaging", "checkpoint", "dataset", "dice", "time_budget", "transforms"]
