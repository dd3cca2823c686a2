# 1st place's SegFormer-b5 at 960 px: MiT-b5 (ImageNet), 2 classes (background / FTU), GroupNorm(32) head at batch 1
# per GPU, CE : Lovasz = 1 : 3, AdamW 6e-5 for 45k iterations, random resize of the tile to 480-1600 px (scaled to
# the tile size: ratio 0.47-1.56 of 1024) then a tile-sized crop. Tiles: python -m data_prep.tiles --size 960.
_base_ = [
    './_base_/models/segformer_mit.py', './_base_/datasets/hubmap_tiles.py',
    './_base_/default_runtime.py', './_base_/schedules/adamw_45k_segformer.py'
]
tile_size = 960
# MiT weights converted for mmseg, downloaded once into pretrained/ (never at run time):
# https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segformer/mit_b5_20220624-658746d9.pth
# Another location: --backbone-weights PATH; random init: --backbone-weights none
model = dict(
    data_preprocessor=dict(size=(tile_size, tile_size)),
    backbone=dict(
        embed_dims=64,
        num_layers=[3, 6, 40, 3],
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='pretrained/mit_b5_20220624-658746d9.pth')),
    decode_head=dict(in_channels=[64, 128, 320, 512]))
train_pipeline = [
    dict(type='LoadTileImage'),
    dict(type='LoadAnnotations'),
    dict(type='FtuMask'),
    dict(type='AugmentPreset', preset='seed10+stain'),
    dict(type='RandomResize', scale=(tile_size, tile_size), ratio_range=(480 / 1024, 1600 / 1024), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(tile_size, tile_size)),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=1, dataset=dict(pipeline=train_pipeline))
