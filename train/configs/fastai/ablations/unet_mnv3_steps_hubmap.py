"""unet_mnv3_steps with the `hubmap` preset: flips, wide-zoom affine, brightness/contrast, HSV, stain transfer, HED."""

from dataclasses import replace

from train.configs.fastai.ablations.unet_mnv3_steps import config as steps

config = replace(steps, augment="hubmap")
