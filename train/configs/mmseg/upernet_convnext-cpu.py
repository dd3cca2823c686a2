# A small ConvNeXt + UperNet for CPU at 256 px, random init: the mmseg entry of benchmarks/recipe.py, sized for about
# 20 minutes on 2 cores (`--minutes 20` fits max_iters and the schedule to the time; 2000 is the nominal length).
_base_ = [
    './_base_/models/upernet_convnext.py', './_base_/datasets/hubmap_tiles.py',
    './_base_/default_runtime.py', './_base_/schedules/adamw_20k.py'
]
tile_size = 256
max_iters = 2000
val_interval = 500
channels = [32, 64, 128, 256]
# batch 8 per step: BatchNorm statistics are usable and BN is faster than GroupNorm on CPU
norm_cfg = dict(_delete_=True, type='BN', requires_grad=True)  # _delete_: replace, not merge into, _base_'s GN
model = dict(
    backbone=dict(
        arch=dict(_delete_=True, depths=[1, 1, 3, 1], channels=channels),
        drop_path_rate=0.0,
        # layer scale 1.0, not ConvNeXt's 1e-6: with a few thousand iterations, every block must count from the start
        layer_scale_init_value=1.0),
    decode_head=dict(
        in_channels=channels,
        channels=64,
        pool_scales=(1, 2, 3),
        dropout_ratio=0.0,
        norm_cfg=norm_cfg,
        # background down-weighted: short runs otherwise settle on the all-background plateau
        loss_decode=dict(class_weight=[0.3, 1.0, 1.0, 1.0, 1.0, 1.0])),
    auxiliary_head=None)
# no layer-wise decay or AMP: a small model from scratch on CPU
optim_wrapper = dict(
    _delete_=True, type='OptimWrapper', optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.01))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', power=1.0, eta_min=1e-5, by_epoch=False, begin=50, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=val_interval)
default_hooks = dict(logger=dict(interval=25), checkpoint=dict(interval=val_interval))
# flips only: cheap on CPU; colour and warp presets cost more CPU time per tile than a 20-minute run can spare
train_pipeline = [
    dict(type='LoadTileImage'),
    dict(type='LoadAnnotations'),
    dict(type='AugmentPreset', preset='flips'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=8, num_workers=1, dataset=dict(pipeline=train_pipeline))
env_cfg = dict(cudnn_benchmark=False)
