# UperNet on an mmpretrain ConvNeXt-B backbone, 6 classes (inference.organs.CLASSES: background + 5 organs).
# Tiles, normalisation (ImageNet mean/std on the 0-255 scale, no channel swap) and GroupNorm: encoder_decoder.py.
# GroupNorm in the heads (the ConvNeXt backbone has its own LayerNorm): the 768 px configs train 2 to 4 images per
# GPU, where BatchNorm's batch statistics are noise and differ between training and inference; GroupNorm does not
# depend on the batch, so one GPU and several GPUs train the same model. Configs at batch >= 8 may switch to BN.
_base_ = './encoder_decoder.py'
data_preprocessor = dict(size_divisor=32)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='mmpretrain.ConvNeXt',
        arch='base',
        out_indices=[0, 1, 2, 3],
        drop_path_rate=0.4,
        layer_scale_init_value=1.0,
        gap_before_final_norm=False,
        init_cfg=None),
    decode_head=dict(
        type='UPerHead',
        in_channels=[128, 256, 512, 1024],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=6,
        norm_cfg={{_base_.norm_cfg}},
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, avg_non_ignore=True, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=512,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=6,
        norm_cfg={{_base_.norm_cfg}},
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, avg_non_ignore=True, loss_weight=0.4)))
