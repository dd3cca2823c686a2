# SegFormer (MiT backbone + all-MLP head), 2 classes (background / FTU): 1st place's model family. Settings of the
# MiT-b0 architecture; the b3 / b4 / b5 configs change embed_dims, num_layers and the head's in_channels (mmseg's
# segformer configs). Tiles are RGB (no channel swap); ImageNet mean/std on the 0-255 scale.
# GroupNorm(32) in the head: 1st place found it beat BatchNorm at batch 4, and trained at batch 1, where BatchNorm
# cannot work at all. The MiT backbone has LayerNorm only.
# Loss CE : Lovasz = 1 : 3 (1st place). mmseg's LovaszLoss needs reduction='none' when per_image is False.
# data_preprocessor.size pads every (randomly resized and cropped) sample back to the tile size; a config with
# its tile_size sets it, the RandomResize scale and the RandomCrop size (see segformer_mit-b5_960.py).
norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=False,
    pad_val=0,
    seg_pad_val=255,
    size=(1024, 1024))
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,
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
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=[
            dict(type='CrossEntropyLoss', use_sigmoid=False, avg_non_ignore=True, loss_weight=1.0),
            dict(type='LovaszLoss', loss_type='multi_class', classes='present', per_image=False, reduction='none',
                 loss_weight=3.0),
        ]),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
