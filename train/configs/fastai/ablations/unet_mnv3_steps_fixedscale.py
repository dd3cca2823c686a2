"""unet_mnv3_steps without physical scale jitter or low-res blur."""

from dataclasses import replace

from train.configs.fastai.ablations.unet_mnv3_steps import config as steps

config = replace(steps, scale_range=(1.0, 1.0), lowres_prob=0.0)
