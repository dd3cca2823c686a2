# 1st place's SegFormer-b3 at 1024 px: segformer_mit-b5_960 with the MiT-b3 backbone on 1024 px tiles.
_base_ = './segformer_mit-b5_960.py'
tile_size = 1024
# https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segformer/mit_b3_20220624-13b1141c.pth
model = dict(
    data_preprocessor=dict(size=(tile_size, tile_size)),
    backbone=dict(
        num_layers=[3, 4, 18, 3],
        init_cfg=dict(checkpoint='pretrained/mit_b3_20220624-13b1141c.pth')))
# b5's pipeline (parsed at its 960 px) with the random resize scale and the crop size at this tile size
train_pipeline = [
    dict(step, scale=(tile_size, tile_size)) if step.type == 'RandomResize'
    else dict(step, crop_size=(tile_size, tile_size)) if step.type == 'RandomCrop'
    else step
    for step in _base_.train_pipeline
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
