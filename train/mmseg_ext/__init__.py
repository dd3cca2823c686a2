"""Our additions to mmseg's registries (dataset, pipeline steps, validation loop, hooks), loaded by custom_imports."""

from train.mmseg_ext import dataset, dice, time_budget, transforms

__all__ = ["dataset", "dice", "time_budget", "transforms"]
