# The CPU configs' schedule, for about 20 minutes on 2 cores: 2000 nominal iterations (`--minutes 20` fits max_iters
# and the schedule to the time), validation and checkpoint every 500, logging every 25. AdamW without layer-wise
# decay or AMP (_delete_: a small model from scratch on CPU), 50 iterations of warm-up then linear decay to 1e-5.
# adamw_20k's loops, validation and hooks otherwise.
_base_ = './adamw_20k.py'
max_iters = 2000
val_interval = 500
optim_wrapper = dict(
    _delete_=True, type='OptimWrapper', optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.01))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', power=1.0, eta_min=1e-5, by_epoch=False, begin=50, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=val_interval)
default_hooks = dict(logger=dict(interval=25), checkpoint=dict(interval=val_interval))
