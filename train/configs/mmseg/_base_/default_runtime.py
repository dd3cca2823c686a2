default_scope = 'mmseg'
# mmpretrain for the ConvNeXt backbone; train.mmseg_ext for our dataset, pipeline steps, validation loop and hooks
custom_imports = dict(imports=['mmpretrain.models', 'train.mmseg_ext'], allow_failed_imports=False)
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
# multi-GPU runs (--launcher pytorch) convert any BN to SyncBN (configs at batch >= 8 that use BN); GroupNorm stays
sync_bn = 'torch'
randomness = dict(seed=0)
vis_backends = [dict(type='LocalVisBackend')]
# no fixed name: each run (and each Runner in one process, as in the tests) gets its own, logging into its own folder
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends)
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
# --minutes adds train.mmseg_ext.time_budget.TimeBudgetHook here
custom_hooks = []
# weight averaging (3rd place): average_k > 0 makes the fold's model the mean of the weights of the average_k best
# validations ('dice') or of the last average_k checkpoint intervals ('last'); train.mmseg_ext.averaging
average_k = 0
average_by = 'dice'
