"""The prediction engine: Predictor, sliding window and TTA, ensembles, time budget, post-processing."""
