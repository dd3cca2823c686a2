"""unet_mnv3_steps on grey-level input (inference.input_modes "grey"): no hue reaches the network.

Real-tissue benchmark entry (benchmarks/real_tissue.py). The checkpoint records input_mode, so inference.predict
shows the model grey images too.
"""

from dataclasses import replace

from train.configs.fastai.ablations.unet_mnv3_steps import config as steps

config = replace(steps, input_mode="grey")
