"""unet_mnv3_steps on the hematoxylin channel alone (inference.input_modes "hematoxylin").

Hematoxylin is the stain HPA's DAB images and HuBMAP's H&E / PAS images share; colour deconvolution drops DAB,
eosin and PAS before the network. Real-tissue benchmark entry (benchmarks/real_tissue.py).
"""

from dataclasses import replace

from train.configs.fastai.ablations.unet_mnv3_steps import config as steps

config = replace(steps, input_mode="hematoxylin")
