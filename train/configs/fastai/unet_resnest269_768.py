"""The seed team's fastai UNet-ResNeSt269 on 768 px multi-scale tiles (splits 1, 2, 3) with LPB blends."""

from train.configs.fastai.base import FastaiConfig

config = FastaiConfig(
    encoder="tu-resnest269e",
    tile_size=768,
    augment="seed10",
    epochs=40,
    bs=4,
    grad_accum=4,
    lr=4e-4,
)
