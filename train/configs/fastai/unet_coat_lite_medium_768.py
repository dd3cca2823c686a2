"""2nd place's best single model: UNet with a timm CoaT-Lite-Medium encoder on 768 px crops at 0.8 um/px.

CoaT takes only the input size it is built for, so the encoder is built at tile_size (train.models.factory) and
the fold is exported as TorchScript (model.ts); the kernel predicts tile_size windows, so that size is all it sees.
"""

from train.configs.fastai.base import FastaiConfig

config = FastaiConfig(
    encoder="tu-coat_lite_medium",
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
