# What the model bases share: an mmseg EncoderDecoder over RGB tiles (no channel swap) with ImageNet mean/std on the
# 0-255 scale (train.mmseg_train writes them on the 0-1 scale into config.json for inference), images padded with 0
# and masks with 255 (ignored), predicted whole. GroupNorm(32) for the heads, which the model bases pass on: at the
# 1-4 images per GPU of the large configs BatchNorm statistics are noise; GroupNorm does not depend on the batch.
norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=False,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
