"""Step-curve benchmark setting (benchmarks/domain_curves.py): unet_r18_cpu's recipe made cheap enough per step.

1500 optimizer steps (6 epochs of 250 batches, one-cycle over steps, no time budget, no validation pass) in about
14 minutes on one quiet CPU thread (0.55 s a step; 1-3 s while five other sessions shared the 2 cores): a
MobileNetV3-Large encoder (random init; at 8 x 128 px it took 0.64 s a step against ResNet-18's 1.17 s and
ResNet-10t's 1.42 s on the same loaded core), 96 px crops at 2.4 um/px (a 230 um field: a glomerulus of 120-200 um
with some surroundings). Everything else (organ balance, FTU centring, scale jitter, low-res blur, flips only,
batch 8, lr 2e-3) is unet_r18_cpu's, so each entry of a curve is one field changed from here.
"""

from dataclasses import replace

from train.configs.fastai.cpu.unet_r18_cpu import config as cpu

config = replace(
    cpu,
    encoder="tu-mobilenetv3_large_100",
    tile_size=96,
    pixel_size=2.4,
    epochs=6,
    batches_per_epoch=250,
    minutes=None,
)
