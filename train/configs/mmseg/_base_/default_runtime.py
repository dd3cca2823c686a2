default_scope = 'mmseg'
# mmpretrain for the ConvNeXt backbone; train.mmseg_ext for our dataset, pipeline steps and Dice hook
custom_imports = dict(imports=['mmpretrain.models', 'train.mmseg_ext'], allow_failed_imports=False)
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
# multi-GPU runs (--launcher pytorch) convert BN to SyncBN; single-process runs keep plain BN
sync_bn = 'torch'
randomness = dict(seed=0)
vis_backends = [dict(type='LocalVisBackend')]
# no fixed name: each run (and each Runner in one process, as in the tests) gets its own, logging into its own folder
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends)
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
# full-image Dice on the validation images (train.validation.full_image_dice), logged as val/dice
custom_hooks = [dict(type='FullImageDiceHook', batch_size=8)]
