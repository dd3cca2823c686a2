# upernet_convnext-cpu.py shrunk for `make demo`: a tiny ConvNeXt that trains on CPU in about two minutes (250
# iterations: with 300, `make demo` took 6 min 2 s on an idle 2-core machine, over its 6-minute goal).
_base_ = ['./upernet_convnext-cpu.py']
max_iters = 250
val_interval = 125
channels = [16, 32, 64, 128]
model = dict(
    backbone=dict(arch=dict(_delete_=True, depths=[1, 1, 2, 1], channels=channels)),
    decode_head=dict(in_channels=channels, channels=32))
optim_wrapper = dict(optimizer=dict(lr=4e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', power=1.0, eta_min=1e-5, by_epoch=False, begin=20, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=val_interval)
default_hooks = dict(checkpoint=dict(interval=val_interval))
