"""unet_r18_cpu whose model is the weight average of its last 3 epochs (3rd place's averaging, CPU-sized).

"last", not "dice": benchmarks/recipe.py trains fold -1, which has no validation Dice to rank epochs by.
"""

from dataclasses import replace

from train.configs.fastai.cpu.unet_r18_cpu import config as cpu

config = replace(cpu, average_k=3, average_by="last")
