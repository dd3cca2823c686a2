"""2nd place: UNet with a timm EfficientNetV2-L encoder on 768 px crops at 0.8 um/px.

Batch 4 per GPU: the encoder keeps its ImageNet BN statistics (freeze_encoder_bn), the decoder uses GroupNorm.
"""

from dataclasses import replace

from train.configs.fastai._gpu_recipe import GPU_CROPS

config = replace(GPU_CROPS, encoder="tu-tf_efficientnetv2_l", freeze_encoder_bn=True)
