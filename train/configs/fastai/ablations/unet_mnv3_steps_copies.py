"""unet_mnv3_steps drawing 30% of its crops from offline stain-transferred copies (1st place's recipe).

The tile set needs the copies first: `python -m data_prep.stain_copies --tiles T --targets H&E_PAS_IMAGES`
(benchmarks/domain_curves.py: `--tiles-hook`). Augmentation stays `flips`, so the entry differs from
unet_mnv3_steps_stain only in where the H&E / PAS colours come from: fixed offline copies towards real target
images instead of online transfer to random stain matrices.
"""

from dataclasses import replace

from train.configs.fastai.ablations.unet_mnv3_steps import config as steps

config = replace(steps, stain_copy_share=0.3)
