# upernet_convnext-b_768 with SGD + poly decay (mmseg's classic schedule) instead of AdamW.
# Batch 4 per GPU with GroupNorm heads, as upernet_convnext-b_768 (BatchNorm statistics at batch 4 are noise).
_base_ = './upernet_convnext-b_768.py'
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=5e-4),
    clip_grad=None,
    loss_scale='dynamic')
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=1000),
    dict(type='PolyLR', power=0.9, eta_min=1e-4, by_epoch=False, begin=1000, end={{_base_.max_iters}}),
]
