"""2nd place: UNet with a timm ConvNeXt-L encoder on 768 px crops at 0.8 um/px (ConvNeXt has LayerNorm, no BN)."""

from dataclasses import replace

from train.configs.fastai._gpu_recipe import GPU_CROPS

config = replace(GPU_CROPS, encoder="tu-convnext_large", lr=2e-4)
