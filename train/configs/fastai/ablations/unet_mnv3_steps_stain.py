"""unet_mnv3_steps with the `flips+stain` preset: 30% of the crops re-stained as H&E / PAS."""

from dataclasses import replace

from train.configs.fastai.ablations.unet_mnv3_steps import config as steps

config = replace(steps, augment="flips+stain")
