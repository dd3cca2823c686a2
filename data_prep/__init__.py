"""Data preparation: demo data, folds, tile sets, Laplacian pyramid blends and augmentations."""
