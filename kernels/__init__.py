"""Kaggle packaging: build offline datasets and the submission notebook from checkpoints."""
