"""Experiment configs: fastai/ holds typed dataclass configs, mmseg/ holds mmengine configs."""
