"""The seed team's fastai UNet-ResNeSt269 on 768 px multi-scale tiles (splits 1, 2, 3) with LPB blends.

Kept on the seed team's tile sampler for comparison; stain transfer added (HuBMAP is H&E/PAS). Batch 4 per GPU:
the encoder keeps its ImageNet BN statistics and the decoder uses GroupNorm (several GPUs: SyncBN).
"""

from dataclasses import replace

from train.configs.fastai._gpu_recipe import GPU_RECIPE

config = replace(GPU_RECIPE, encoder="tu-resnest269e", sampler="tiles", freeze_encoder_bn=True)
