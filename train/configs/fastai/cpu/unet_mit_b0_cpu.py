"""The smallest MiT (SegFormer-b0 encoder) in the CPU recipe: unet_r18_cpu with encoder mit_b0, for
benchmarks/recipe.py --also unet_mit_b0_cpu (transformer vs ResNet-18 at the same 20 CPU minutes, random init).

Transformers from random weights usually want a lower LR than a ResNet; 1e-3 is a guess, not tuned.
"""

from dataclasses import replace

from train.configs.fastai.cpu.unet_r18_cpu import config as cpu

config = replace(cpu, encoder="mit_b0", lr=1e-3)
