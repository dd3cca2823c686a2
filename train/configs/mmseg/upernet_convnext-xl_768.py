# upernet_convnext-b_768 with a ConvNeXt-XL (ImageNet-22k) backbone, batch 2 per GPU (the seed team's model).
# Heads use _base_'s GroupNorm: at batch 2 per GPU BatchNorm statistics are noise (a test checks no BN is left).
_base_ = './upernet_convnext-b_768.py'
# https://download.openmmlab.com/mmclassification/v0/convnext/convnext-xlarge_3rdparty_in21k_20220124-f909bad7.pth
model = dict(
    backbone=dict(
        arch='xlarge',
        init_cfg=dict(checkpoint='pretrained/convnext-xlarge_3rdparty_in21k_20220124-f909bad7.pth')),
    decode_head=dict(in_channels=[256, 512, 1024, 2048]),
    auxiliary_head=dict(in_channels=1024))
train_dataloader = dict(batch_size=2)
