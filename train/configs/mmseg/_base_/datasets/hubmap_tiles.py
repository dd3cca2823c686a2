# Our tile sets (python -m data_prep.tiles): TILES/index.csv + RGB tiles + class-index masks.
# train.mmseg_upernet fills in tiles_dir and fold from --tiles and --fold:
# train = rows with fold != k (all sources, LPB blends included), val = fold == k and source "original".
tile_size = 768  # side of the tiles this config expects; checked against the tile set
# sliding-window settings written to config.json for the inference engine
inference = dict(overlap=0.5, reduce=None, reduce_k=1.0, threshold=0.5)
train_pipeline = [
    dict(type='LoadTileImage'),
    dict(type='LoadAnnotations'),
    dict(type='AugmentPreset', preset='seed10+stain'),
    dict(type='PackSegInputs'),
]
val_pipeline = [
    dict(type='LoadTileImage'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='HubmapTileDataset', tiles_dir=None, fold=None, subset='train', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='HubmapTileDataset', tiles_dir=None, fold=None, subset='val', pipeline=val_pipeline))
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
