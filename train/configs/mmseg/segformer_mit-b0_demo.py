# segformer_mit-b0_cpu.py shrunk for the demo: a narrower MiT-b0 (one block per stage) that trains on CPU in a
# couple of minutes.
_base_ = ['./segformer_mit-b0_cpu.py']
max_iters = 300
val_interval = 150
model = dict(
    backbone=dict(num_layers=[1, 1, 1, 1]),
    decode_head=dict(channels=64))
optim_wrapper = dict(optimizer=dict(lr=2e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', power=1.0, eta_min=1e-5, by_epoch=False, begin=20, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=val_interval)
default_hooks = dict(checkpoint=dict(interval=val_interval))
