"""UNet with an EfficientNet-B7 encoder on 768 px multi-scale tiles (second-place style encoder)."""

from train.configs.fastai.base import FastaiConfig

config = FastaiConfig(
    encoder="tu-tf_efficientnet_b7",
    tile_size=768,
    augment="seed10+stain",
    epochs=40,
    bs=4,
    grad_accum=4,
    lr=4e-4,
    channels_last=True,
)
