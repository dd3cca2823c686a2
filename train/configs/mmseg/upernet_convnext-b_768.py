# UperNet + ConvNeXt-B (ImageNet-22k), 768 px tiles, AdamW 20k iterations, batch 4 per GPU.
# Heads use _base_'s GroupNorm: at batch 4 per GPU BatchNorm statistics are noise (a test checks no BN is left).
_base_ = [
    './_base_/models/upernet_convnext.py', './_base_/datasets/hubmap_tiles.py',
    './_base_/default_runtime.py', './_base_/schedules/adamw_20k.py'
]
# Backbone weights from mmpretrain's model zoo, downloaded once into pretrained/ (never at run time):
# https://download.openmmlab.com/mmclassification/v0/convnext/convnext-base_3rdparty_in21k_20220124-13b83eec.pth
# Another location: --cfg-options model.backbone.init_cfg.checkpoint=PATH; random init: model.backbone.init_cfg=None
model = dict(
    backbone=dict(
        init_cfg=dict(
            _delete_=True,
            type='Pretrained',
            checkpoint='pretrained/convnext-base_3rdparty_in21k_20220124-13b83eec.pth',
            prefix='backbone.')))
