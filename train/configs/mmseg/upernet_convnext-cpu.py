# A small ConvNeXt + UperNet for CPU at 256 px, random init: the mmseg entry of benchmarks/recipe.py, sized for about
# 20 minutes on 2 cores (`--minutes 20` fits max_iters and the schedule to the time; 2000 is the nominal length).
_base_ = [
    './_base_/models/upernet_convnext.py', './_base_/datasets/hubmap_tiles.py',
    './_base_/default_runtime.py', './_base_/schedules/adamw_2k_cpu.py'
]
tile_size = 256
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
# flips only: cheap on CPU; colour and warp presets cost more CPU time per tile than a 20-minute run can spare
train_pipeline = [
    dict(type='LoadTileImage'),
    dict(type='LoadAnnotations'),
    dict(type='AugmentPreset', preset='flips'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=8, num_workers=1, dataset=dict(pipeline=train_pipeline))
env_cfg = dict(cudnn_benchmark=False)
