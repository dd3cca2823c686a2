"""unet_mnv3_steps with both stain sources: 30% of crops from offline stain-transferred copies (1st place) and the
`flips+stain` preset's online transfer on top (30% of crops re-stained to random H&E / PAS matrices).

The real-mask benchmark found the two complementary per organ: copies towards real target images lift HuBMAP
kidney and spleen most (0.79 / 0.94 with --stain-tta), online transfer lifts large intestine (0.42 against 0.24).
Needs the copies in the tile set first: `python -m data_prep.stain_copies --tiles T --targets H&E_PAS_IMAGES`.
"""

from dataclasses import replace

from train.configs.fastai.ablations.unet_mnv3_steps import config as steps

config = replace(steps, stain_copy_share=0.3, augment="flips+stain")
