"""mmseg pipeline steps: read a tile as RGB, and apply the shared augmentation presets of data_prep.augment."""

from __future__ import annotations

from pathlib import Path

import torch.utils.data
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS

from data_prep.augment import PRESETS, train_transforms
from data_prep.tiles import read_png


@TRANSFORMS.register_module()
class LoadTileImage(BaseTransform):
    """Read a tile PNG as RGB uint8: mmcv's loader gives BGR, our augmentations and normalisation expect RGB."""

    def transform(self, results: dict) -> dict:
        img = read_png(Path(results["img_path"]))
        results["img"] = img
        results["img_shape"] = img.shape[:2]
        results["ori_shape"] = img.shape[:2]
        return results


@TRANSFORMS.register_module()
class AugmentPreset(BaseTransform):
    """Apply `data_prep.augment.train_transforms(preset)` to the image and its class-index mask."""

    def __init__(self, preset: str) -> None:
        if preset not in PRESETS:
            raise ValueError(f"augmentation preset {preset!r} not in {PRESETS}")
        self.preset = preset
        self.compose = train_transforms(preset)
        self._seed: int | None = None

    def _reseed_in_worker(self) -> None:
        # albumentations keeps its own generator, copied as is into every forked DataLoader worker: without
        # reseeding, all workers (and every epoch) would draw the same augmentations.
        info = torch.utils.data.get_worker_info()
        if info is not None and info.seed != self._seed:
            self._seed = info.seed
            self.compose.set_random_seed(info.seed % 2**32)

    def transform(self, results: dict) -> dict:
        self._reseed_in_worker()
        out = self.compose(image=results["img"], mask=results["gt_seg_map"])
        if out["image"].shape[:2] != results["img"].shape[:2]:
            raise ValueError(f"preset {self.preset!r} changed the tile size; presets must keep it")
        results["img"] = out["image"]
        results["gt_seg_map"] = out["mask"]
        return results

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(preset={self.preset!r})"
