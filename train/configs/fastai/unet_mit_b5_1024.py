"""3rd place's transformer: UNet with a MiT-b5 (SegFormer) encoder on 1024 px crops at 0.8 um/px.

smp's mit_b5 (ImageNet weights from smp's hub, or a local file via --encoder-weights); UNet++ does not take MiT
encoders in smp (no stride-2 feature), so this is a UNet. Batch 4 per GPU: GroupNorm decoder. Transformers
train at a lower peak LR than the CNN configs.
"""

from train.configs.fastai.base import FastaiConfig

config = FastaiConfig(
    encoder="mit_b5",
    tile_size=1024,
    pixel_size=0.8,
    augment="seed10+stain",
    lowres_prob=0.1,
    decoder_norm="groupnorm",
    epochs=40,
    bs=4,
    grad_accum=4,
    lr=2e-4,
    channels_last=True,
    average_k=3,  # 3rd place: the weight average of the 3 best checkpoints
)
