"""CPU demo (make demo): the unet_r18_cpu recipe shrunk to 2 minutes of training at 128 px."""

from dataclasses import replace

from train.configs.fastai.cpu.unet_r18_cpu import config as cpu

config = replace(cpu, tile_size=128, bs=16, epochs=4, minutes=2.0, oof_max_side=256)
