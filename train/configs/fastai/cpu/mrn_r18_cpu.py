"""The CPU recipe as a multi-resolution network (MRN, Gu et al. 2018): a second ResNet-18 encoder sees a context
view of 2 x the crop's field (train.models.mrn), for benchmarks/recipe.py --also mrn_r18_cpu (MRN vs UNet at equal time)."""

from dataclasses import replace

from train.configs.fastai.cpu.unet_r18_cpu import config as cpu

config = replace(cpu, arch="MRN", context=2)
