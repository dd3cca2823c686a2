"""unet_mnv3_steps_copies trained twice as long (3000 optimizer steps, one-cycle over all of them).

The real-mask benchmark's HuBMAP rows were still rising at 1500 steps (0.37 at 1000, 0.49 at 1500, 3 seeds): this
entry shows whether the copies keep paying with length, the direction the GPU configs (45k steps) take.
"""

from dataclasses import replace

from train.configs.fastai.ablations.unet_mnv3_steps_copies import config as copies

config = replace(copies, epochs=12)
