"""Tiny CPU demo (make demo): ResNet-18 UNet from random weights, 96 px input, 10 epochs of 10 random batches."""

from train.configs.fastai.base import FastaiConfig

config = FastaiConfig(
    encoder="tu-resnet18",
    encoder_weights=None,
    tile_size=96,
    augment="flips",
    epochs=10,
    bs=16,
    lr=2e-3,
    batches_per_epoch=10,
    mixed_precision=False,
    num_workers=0,
    oof_max_side=256,
)
