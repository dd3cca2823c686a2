"""Inference package: everything the Kaggle kernel ships (domain primitives, predictors, submission)."""
