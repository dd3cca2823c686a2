# 1st place's SegFormer schedule: AdamW 6e-5 (mmseg's SegFormer recipe: no weight decay on position blocks and
# norms, 10x LR in the head), mixed precision, 1500 iterations of linear warm-up then linear decay to 45k
# iterations; validate and keep the best checkpoint by whole-image Dice every 4.5k iterations.
# adamw_20k's loops and hooks; the optimizer is replaced (_delete_: no layer-wise decay constructor).
_base_ = './adamw_20k.py'
max_iters = 45000
val_interval = 4500
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys=dict(pos_block=dict(decay_mult=0.0), norm=dict(decay_mult=0.0), head=dict(lr_mult=10.0))),
    loss_scale='dynamic')
# the base's schedule, loop and checkpoint interval were fixed at its 20k iterations: set again at 45k
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=val_interval)
default_hooks = dict(checkpoint=dict(interval=val_interval))
