"""unet_mnv3_steps with Fourier domain adaptation towards target images (flips+fda: half the crops take a target's
low-frequency amplitudes, beta 0.01-0.05).

The target images are the run's: `--histmatch-targets DIR` (benchmarks/real_tissue.py passes the unlabeled PAS
block). Real-tissue benchmark entry.
"""

from dataclasses import replace

from train.configs.fastai.ablations.unet_mnv3_steps import config as steps

config = replace(steps, augment="flips+fda")
