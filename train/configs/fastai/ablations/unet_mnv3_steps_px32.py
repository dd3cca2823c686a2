"""unet_mnv3_steps at 3.2 um/px (a 307 um field in the same 96 px): the pixel-size / field-of-view choice."""

from dataclasses import replace

from train.configs.fastai.ablations.unet_mnv3_steps import config as steps

config = replace(steps, pixel_size=3.2)
