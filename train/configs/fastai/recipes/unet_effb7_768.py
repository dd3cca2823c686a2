"""UNet with an EfficientNet-B7 encoder on 768 px crops at 0.8 um/px (tile set built with --scaled 0.8).

Batch 4 per GPU: BatchNorm statistics of 4 images are noise, so the encoder keeps its ImageNet BN statistics
(freeze_encoder_bn) and the decoder uses GroupNorm, which does not depend on the batch (several GPUs: SyncBN).
"""

from dataclasses import replace

from train.configs.fastai._gpu_recipe import GPU_CROPS

config = replace(GPU_CROPS, encoder="tu-tf_efficientnet_b7", freeze_encoder_bn=True)
