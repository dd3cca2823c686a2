"""The seed team's UNet-ResNeSt101 on 256 px tiles of images downscaled 4x (tile set built with --reduce 4).

Kept on the seed team's tile sampler for comparison; batch 32 keeps BatchNorm.
"""

from train.configs.fastai.base import FastaiConfig

config = FastaiConfig(
    encoder="tu-resnest101e",
    tile_size=256,
    sampler="tiles",
    train_splits=(),
    train_reduces=(4,),
    valid_split=0,
    reduce=4,
    epochs=40,
    bs=32,
    lr=1e-3,
)
