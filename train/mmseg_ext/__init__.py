"""Our additions to mmseg's registries (dataset, pipeline steps, Dice hook); configs load them via custom_imports."""

from train.mmseg_ext import dataset, dice, transforms

__all__ = ["dataset", "dice", "transforms"]
