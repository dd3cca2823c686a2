"""Tiny CPU demo: ResNet-18 UNet from random weights, 128 px input, a few short epochs (make demo)."""

from train.configs.fastai.base import FastaiConfig

config = FastaiConfig(
    encoder="tu-resnet18",
    encoder_weights=None,
    tile_size=96,
    augment="flips",
    epochs=8,
    bs=16,
    lr=3e-3,
    batches_per_epoch=10,
    mixed_precision=False,
    num_workers=0,
    oof_max_side=256,
)
