"""The best recipe this repo knows for ~20 minutes on 2 CPU cores: ResNet-18 UNet from random weights.

Random 256 px crops of whole images at 0.8 um/px (tile set built with --scaled 0.8), organ-balanced, half of
them centred on an FTU, with physical scale jitter; benchmarks/recipe.py compares it with a plain loop.
"""

from train.configs.fastai.base import FastaiConfig

config = FastaiConfig(
    encoder="tu-resnet18",
    encoder_weights=None,
    tile_size=256,
    pixel_size=0.8,
    augment="hubmap",
    epochs=10,
    bs=8,
    lr=2e-3,
    minutes=20,
    mixed_precision=False,
    num_workers=0,
    oof_max_side=512,
)
