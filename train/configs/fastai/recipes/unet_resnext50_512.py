"""UNet with a ResNeXt50-32x4d encoder on 512 px crops at 0.8 um/px: a mid-size model for one-GPU runs (batch 12 keeps BN)."""

from train.configs.fastai.base import FastaiConfig

config = FastaiConfig(
    encoder="tu-resnext50_32x4d",
    tile_size=512,
    pixel_size=0.8,
    augment="seed10+stain",
    epochs=40,
    bs=12,
    lr=1e-3,
)
