# SegFormer (MiT backbone + all-MLP head), 2 classes (background / FTU): 1st place's model family. Settings of the
# MiT-b0 architecture; the b3 / b4 / b5 configs change embed_dims, num_layers and the head's in_channels (mmseg's
# segformer configs). Tiles, normalisation and the GroupNorm(32) head: encoder_decoder.py.
# GroupNorm(32) in the head: 1st place found it beat BatchNorm at batch 4, and trained at batch 1, where BatchNorm
# cannot work at all. The MiT backbone has LayerNorm only.
# Loss CE : Lovasz = 1 : 3 (1st place). mmseg's LovaszLoss needs reduction='none' when per_image is False.
# data_preprocessor.size pads every (randomly resized and cropped) sample back to the tile size; a config with
# its tile_size sets it, the RandomResize scale and the RandomCrop size (see segformer_mit-b5_960.py).
_base_ = './encoder_decoder.py'
data_preprocessor = dict(size=(1024, 1024))
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='MixVisionTransformer',
        in_channels=3,
        embed_dims=32,
        num_stages=4,
        num_layers=[2, 2, 2, 2],
        num_heads=[1, 2, 5, 8],
        patch_sizes=[7, 3, 3, 3],
        sr_ratios=[8, 4, 2, 1],
        out_indices=(0, 1, 2, 3),
        mlp_ratio=4,
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.1,
        init_cfg=None),
    decode_head=dict(
        type='SegformerHead',
        in_channels=[32, 64, 160, 256],
        in_index=[0, 1, 2, 3],
        channels=256,
        dropout_ratio=0.1,
        num_classes=2,
        norm_cfg={{_base_.norm_cfg}},
        align_corners=False,
        loss_decode=[
            dict(type='CrossEntropyLoss', use_sigmoid=False, avg_non_ignore=True, loss_weight=1.0),
            dict(type='LovaszLoss', loss_type='multi_class', classes='present', per_image=False, reduction='none',
                 loss_weight=3.0),
        ]))
