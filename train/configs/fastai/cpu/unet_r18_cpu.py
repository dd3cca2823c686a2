"""The best recipe this repo knows for ~20 minutes on 2 CPU cores: ResNet-18 UNet from random weights.

Random 256 px crops of whole images at 0.8 um/px (tile set built with --scaled 0.8), organ-balanced, half of
them centred on an FTU, with physical scale jitter and the blur of small coarse images upsampled (HuBMAP prostate
is 6.263 um/px), flips only: at 130-190 optimizer steps (20 CPU minutes) the `hubmap` preset's stain transfer,
affine and HSV cost more than they gave, on HuBMAP rows too (README, benchmarks/recipe.py). benchmarks/recipe.py
compares it with a plain loop, benchmarks/domain.py with itself plus light stain transfer and without scale jitter.

Chosen again on real tissue (benchmarks/real_tissue.py, DAB kidney -> HuBMAP PAS kidney, 3 seeds): flips stays. No
training-side stain technique (strong colour, hematoxylin input, histogram matching, FDA, offline copies, online
stain transfer, pseudo-labels) clearly beat flips once inference adapts BatchNorm; grey input was ahead on PAS (0.40
against 0.37 side by side, 2 of 3 seeds) but cost 0.04 on real H&E colon (GlaS, no shift). AdaBN is what carries a
DAB-trained model to PAS (0.12 -> 0.40 Dice, 0.81x the in-domain ceiling): inference.predict does it by default for
the data sources a model never trained on, which this trainer records in config.json.
"""

from train.configs.fastai.base import FastaiConfig

config = FastaiConfig(
    encoder="tu-resnet18",
    encoder_weights=None,
    tile_size=256,
    pixel_size=0.8,
    scale_range=(0.75, 1.33),
    lowres_prob=0.2,
    augment="flips",
    epochs=10,
    bs=8,
    lr=2e-3,
    minutes=20,
    mixed_precision=False,
    num_workers=0,
    oof_max_side=512,
)
