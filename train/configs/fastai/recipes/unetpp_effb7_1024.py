"""3rd place: UNet++ with an EfficientNet-B7 encoder on 1024 px crops at 0.8 um/px, 3 best epochs averaged.

Batch 2 per GPU: frozen encoder BN statistics, GroupNorm decoder.
"""

from dataclasses import replace

from train.configs.fastai._gpu_recipe import GPU_CROPS

config = replace(
    GPU_CROPS,
    arch="UnetPlusPlus",
    encoder="tu-tf_efficientnet_b7",
    tile_size=1024,
    freeze_encoder_bn=True,
    bs=2,
    grad_accum=8,
    average_k=3,
)
