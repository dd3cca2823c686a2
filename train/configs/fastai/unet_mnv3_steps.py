"""Step-curve benchmark setting (benchmarks/domain_curves.py): unet_r18_cpu's recipe made cheap enough per step.

1500 optimizer steps (6 epochs of 250 batches, one-cycle over steps, no time budget, no validation pass) fit in
about 15 CPU minutes on one thread: a MobileNetV3-Large encoder (random init; 0.64 s a step of 8 x 128 px on a
loaded core against ResNet-18's 1.17 s and ResNet-10t's 1.42 s), 128 px crops at 2.4 um/px (a 307 um field, more
than a glomerulus with its surroundings). Everything else (organ balance, FTU centring, scale jitter, low-res
blur, flips only, batch 8, lr 2e-3) is unet_r18_cpu's, so one entry of a curve is one field changed from here.
"""

from dataclasses import replace

from train.configs.fastai.unet_r18_cpu import config as cpu

config = replace(
    cpu,
    encoder="tu-mobilenetv3_large_100",
    tile_size=96,
    pixel_size=2.4,
    epochs=6,
    batches_per_epoch=250,
    minutes=None,
)
