"""mmseg pipeline steps: read a tile as RGB, and apply the shared augmentation presets of data_prep.augment."""

from __future__ import annotations

from pathlib import Path

from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS

from data_prep.augment import PRESETS, reseed_for_worker, train_transforms
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

    def __init__(self, preset: str, histmatch_targets: tuple[str, ...] = ()) -> None:
        if preset not in PRESETS:
            raise ValueError(f"augmentation preset {preset!r} not in {PRESETS}")
        self.preset = preset
        self.compose = train_transforms(preset, histmatch_targets=histmatch_targets)  # references: "+histmatch"
        self._seed: int | None = None

    def transform(self, results: dict) -> dict:
        # albumentations transforms keep their own generators, copied as they are into every DataLoader worker:
        # reseed each transform from torch's per-worker, per-epoch seed (mmengine's worker_init_fn seeds torch
        # with seed + worker id, the same every epoch, so the DataLoader's own worker seed is the one to use).
        self._seed = reseed_for_worker(self.compose, self._seed)
        out = self.compose(image=results["img"], mask=results["gt_seg_map"])
        if out["image"].shape[:2] != results["img"].shape[:2]:
            raise ValueError(f"preset {self.preset!r} changed the tile size; presets must keep it")
        results["img"] = out["image"]
        results["gt_seg_map"] = out["mask"]
        return results

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(preset={self.preset!r})"
