"""unet_mnv3_steps with the `flips+histmatch` preset (3rd place): half the crops histogram-matched to H&E / PAS images.

The reference images are the run's: pass `--histmatch-targets DIR` (benchmarks/domain_curves.py passes the real-mask
data's unlabeled targets/ folder), or set histmatch_targets here.
"""

from dataclasses import replace

from train.configs.fastai.ablations.unet_mnv3_steps import config as steps

config = replace(steps, augment="flips+histmatch")
