"""2nd place: UNet with a timm ConvNeXt-L encoder on 768 px crops at 0.8 um/px (ConvNeXt has LayerNorm, no BN)."""

from train.configs.fastai.base import FastaiConfig

config = FastaiConfig(
    encoder="tu-convnext_large",
    tile_size=768,
    pixel_size=0.8,
    augment="seed10+stain",
    lowres_prob=0.1,
    decoder_norm="groupnorm",
    epochs=40,
    bs=4,
    grad_accum=4,
    lr=2e-4,
    channels_last=True,
)
