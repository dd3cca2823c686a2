"""unet_mnv3_steps_hema plus the strong colour augmentation (flips+colour): both stain-robust levers at once.

Real-tissue benchmark entry (benchmarks/real_tissue.py).
"""

from dataclasses import replace

from train.configs.fastai.ablations.unet_mnv3_steps_hema import config as hema

config = replace(hema, augment="flips+colour")
