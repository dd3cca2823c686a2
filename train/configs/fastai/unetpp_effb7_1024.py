"""3rd place: UNet++ with an EfficientNet-B7 encoder on 1024 px crops at 0.8 um/px, 3 best epochs averaged.

Batch 2 per GPU: frozen encoder BN statistics, GroupNorm decoder.
"""

from train.configs.fastai.base import FastaiConfig

config = FastaiConfig(
    arch="UnetPlusPlus",
    encoder="tu-tf_efficientnet_b7",
    tile_size=1024,
    pixel_size=0.8,
    augment="seed10+stain",
    lowres_prob=0.1,
    decoder_norm="groupnorm",
    freeze_encoder_bn=True,
    epochs=40,
    bs=2,
    grad_accum=8,
    lr=4e-4,
    channels_last=True,
    average_k=3,
)
