"""Ablation of unet_r18_cpu for benchmarks/domain.py: the same recipe without physical scale jitter or low-res blur."""

from dataclasses import replace

from train.configs.fastai.cpu.unet_r18_cpu import config as cpu

config = replace(cpu, scale_range=(1.0, 1.0), lowres_prob=0.0)
