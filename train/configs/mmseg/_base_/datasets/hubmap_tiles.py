# Our tile sets (python -m data_prep.tiles): TILES/index.csv + RGB tiles + class-index masks.
# train.mmseg_train fills in tiles_dir and fold from --tiles and --fold:
# train = rows with fold != k (all sources, LPB blends included), val = fold == k and source "original".
tile_size = 768  # side of the tiles this config expects; checked against the tile set
# sliding-window settings written to config.json for the inference engine; reduce_k None = the finest split
# trained on, and config.json's pixel_size is the median um/px of those tiles (train.mmseg_train.inference_scale)
inference = dict(overlap=0.5, reduce=None, reduce_k=None, threshold=0.5)
train_pipeline = [
    dict(type='LoadTileImage'),
    dict(type='LoadAnnotations'),
    dict(type='AugmentPreset', preset='seed10+stain'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='HubmapTileDataset', tiles_dir=None, fold=None, subset='train', pipeline=train_pipeline))
# Validation (KernelValLoop, see schedules) predicts whole images, never these tiles: the dataset only names the
# validation images (fold == k, source original), so the loader is never iterated and needs no pipeline or workers.
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='HubmapTileDataset', tiles_dir=None, fold=None, subset='val', pipeline=[]))
# mmengine wants an evaluator next to a val_dataloader; KernelValLoop scores with the inference engine instead
val_evaluator = []
