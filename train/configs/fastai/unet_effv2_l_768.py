"""2nd place: UNet with a timm EfficientNetV2-L encoder on 768 px crops at 0.8 um/px.

Batch 4 per GPU: the encoder keeps its ImageNet BN statistics (freeze_encoder_bn), the decoder uses GroupNorm.
"""

from train.configs.fastai.base import FastaiConfig

config = FastaiConfig(
    encoder="tu-tf_efficientnetv2_l",
    tile_size=768,
    pixel_size=0.8,
    augment="seed10+stain",
    lowres_prob=0.1,
    decoder_norm="groupnorm",
    freeze_encoder_bn=True,
    epochs=40,
    bs=4,
    grad_accum=4,
    lr=4e-4,
    channels_last=True,
)
