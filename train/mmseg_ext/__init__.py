"""Our additions to mmseg's registries (dataset, pipeline steps, validation loop, time-budget and weight-averaging
hooks), loaded by custom_imports."""

from train.mmseg_ext import averaging, dataset, dice, time_budget, transforms

__all__ = ["averaging", "dataset", "dice", "time_budget", "transforms"]
