"""unet_mnv3_steps with the 1st place's strong colour augmentation (HSV +-20, gamma 0.25-2.5): preset flips+colour.

Real-tissue benchmark entry (benchmarks/real_tissue.py): does colour jitter alone carry a DAB-trained model to PAS?
"""

from dataclasses import replace

from train.configs.fastai.ablations.unet_mnv3_steps import config as steps

config = replace(steps, augment="flips+colour")
