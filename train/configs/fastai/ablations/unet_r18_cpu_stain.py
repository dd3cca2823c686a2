"""Ablation of unet_r18_cpu for benchmarks/domain.py: the same recipe with 30% of the crops re-stained as H&E/PAS."""

from dataclasses import replace

from train.configs.fastai.cpu.unet_r18_cpu import config as cpu

config = replace(cpu, augment="flips+stain")
