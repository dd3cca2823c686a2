"""UNet with an EfficientNet-B7 encoder on 768 px crops at 0.8 um/px (tile set built with --scaled 0.8).

Batch 4 per GPU: BatchNorm statistics of 4 images are noise, so the encoder keeps its ImageNet BN statistics
(freeze_encoder_bn) and the decoder uses LayerNorm, which does not depend on the batch (several GPUs: SyncBN).
"""

from train.configs.fastai.base import FastaiConfig

config = FastaiConfig(
    encoder="tu-tf_efficientnet_b7",
    tile_size=768,
    pixel_size=0.8,
    augment="seed10+stain",
    lowres_prob=0.1,
    decoder_norm="layernorm",
    freeze_encoder_bn=True,
    epochs=40,
    bs=4,
    grad_accum=4,
    lr=4e-4,
    channels_last=True,
)
