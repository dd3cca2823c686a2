# The smallest SegFormer (MiT-b0) for CPU at 256 px, random init: the SegFormer entry of benchmarks/recipe.py
# (--mmseg upernet_convnext-cpu segformer_mit-b0_cpu), sized like upernet_convnext-cpu for about 20 minutes on 2
# cores (`--minutes 20` fits max_iters and the schedule to the time; 2000 is the nominal length).
# 1st place's loss and head (2 classes, CE : Lovasz 1 : 3, GroupNorm head); batch 8, a higher LR than 6e-5 and a
# narrower resize range than theirs: a small model from scratch in minutes, not a fine-tune over 45k iterations.
_base_ = [
    './_base_/models/segformer_mit.py', './_base_/datasets/hubmap_tiles.py',
    './_base_/default_runtime.py', './_base_/schedules/adamw_2k_cpu.py'
]
tile_size = 256
model = dict(
    data_preprocessor=dict(size=(tile_size, tile_size)),
    backbone=dict(drop_path_rate=0.0),
    decode_head=dict(channels=128, dropout_ratio=0.0))
# the CPU schedule's AdamW (no AMP) at 1e-3; no weight decay on norms and position blocks as in the GPU recipe, the
# head at the backbone's LR
optim_wrapper = dict(
    optimizer=dict(lr=1e-3, betas=(0.9, 0.999)),
    paramwise_cfg=dict(custom_keys=dict(pos_block=dict(decay_mult=0.0), norm=dict(decay_mult=0.0))))
# flips and a mild random resize (0.75-1.33): cheap on CPU, like upernet_convnext-cpu's flips
train_pipeline = [
    dict(type='LoadTileImage'),
    dict(type='LoadAnnotations'),
    dict(type='FtuMask'),
    dict(type='AugmentPreset', preset='flips'),
    dict(type='RandomResize', scale=(tile_size, tile_size), ratio_range=(0.75, 1.33), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(tile_size, tile_size)),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=8, num_workers=1, dataset=dict(pipeline=train_pipeline))
env_cfg = dict(cudnn_benchmark=False)
