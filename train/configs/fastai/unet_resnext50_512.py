"""UNet with a ResNeXt50-32x4d encoder on 512 px multi-scale tiles: a mid-size model for one-GPU runs."""

from train.configs.fastai.base import FastaiConfig

config = FastaiConfig(
    encoder="tu-resnext50_32x4d",
    tile_size=512,
    epochs=40,
    bs=12,
    lr=1e-3,
)
