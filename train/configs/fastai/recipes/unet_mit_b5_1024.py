"""3rd place's transformer: UNet with a MiT-b5 (SegFormer) encoder on 1024 px crops at 0.8 um/px.

smp's mit_b5 (ImageNet weights from smp's hub, or a local file via --encoder-weights); UNet++ does not take MiT
encoders in smp (no stride-2 feature), so this is a UNet. Batch 4 per GPU: GroupNorm decoder. Transformers
train at a lower peak LR than the CNN configs.
"""

from dataclasses import replace

from train.configs.fastai._gpu_recipe import GPU_CROPS

config = replace(
    GPU_CROPS,
    encoder="mit_b5",
    tile_size=1024,
    lr=2e-4,
    average_k=3,  # 3rd place: the weight average of the 3 best checkpoints
)
