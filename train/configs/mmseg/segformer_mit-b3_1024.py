# 1st place's SegFormer-b3 at 1024 px: segformer_mit-b5_960 with the MiT-b3 backbone on 1024 px tiles.
_base_ = './segformer_mit-b5_960.py'
tile_size = 1024
# https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segformer/mit_b3_20220624-13b1141c.pth
model = dict(
    data_preprocessor=dict(size=(tile_size, tile_size)),
    backbone=dict(
        num_layers=[3, 4, 18, 3],
        init_cfg=dict(checkpoint='pretrained/mit_b3_20220624-13b1141c.pth')))
train_pipeline = [
    dict(type='LoadTileImage'),
    dict(type='LoadAnnotations'),
    dict(type='FtuMask'),
    dict(type='AugmentPreset', preset='seed10+stain'),
    dict(type='RandomResize', scale=(tile_size, tile_size), ratio_range=(480 / 1024, 1600 / 1024), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(tile_size, tile_size)),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
