# AdamW with stage-wise learning-rate decay for ConvNeXt (mmseg's ConvNeXt recipe), mixed precision,
# linear warm-up then linear decay; validate and keep the best checkpoint by whole-image Dice every 2k iterations.
max_iters = 20000
val_interval = 2000
optim_wrapper = dict(
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=12),
    constructor='LearningRateDecayOptimizerConstructor',
    loss_scale='dynamic')
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=val_interval)
# whole validation images through the inference engine at the kernel's scale (train.mmseg_ext.dice); the trainer
# fills in data_dir and the checkpoint's config.json fields
val_cfg = dict(type='KernelValLoop', batch_size=4)
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(
        type='CheckpointHook', by_epoch=False, interval=val_interval, max_keep_ckpts=1,
        save_best='dice', rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'))
