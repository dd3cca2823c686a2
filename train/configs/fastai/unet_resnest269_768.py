"""The seed team's fastai UNet-ResNeSt269 on 768 px multi-scale tiles (splits 1, 2, 3) with LPB blends.

Kept on the seed team's tile sampler for comparison; stain transfer added (HuBMAP is H&E/PAS). Batch 4 per GPU:
the encoder keeps its ImageNet BN statistics and the decoder uses LayerNorm (several GPUs: SyncBN).
"""

from train.configs.fastai.base import FastaiConfig

config = FastaiConfig(
    encoder="tu-resnest269e",
    tile_size=768,
    sampler="tiles",
    augment="seed10+stain",
    decoder_norm="layernorm",
    freeze_encoder_bn=True,
    epochs=40,
    bs=4,
    grad_accum=4,
    lr=4e-4,
)
