"""2nd place's best single model: UNet with a timm CoaT-Lite-Medium encoder on 768 px crops at 0.8 um/px.

CoaT takes only the input size it is built for, so the encoder is built at tile_size (train.models.factory) and
the fold is exported as TorchScript (model.ts); the kernel predicts tile_size windows, so that size is all it sees.
"""

from dataclasses import replace

from train.configs.fastai._gpu_recipe import GPU_CROPS

config = replace(GPU_CROPS, encoder="tu-coat_lite_medium", lr=2e-4)
