# 1st place's SegFormer-b4 at 960 px: segformer_mit-b5_960 with the MiT-b4 backbone.
_base_ = './segformer_mit-b5_960.py'
# https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segformer/mit_b4_20220624-d588d980.pth
model = dict(
    backbone=dict(
        num_layers=[3, 8, 27, 3],
        init_cfg=dict(checkpoint='pretrained/mit_b4_20220624-d588d980.pth')))
