"""mmseg pipeline steps: read a tile as RGB, apply the shared augmentation presets of data_prep.augment, and map the
class-index mask to an FTU mask for 2-class models."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS

from data_prep.augment import PRESETS, reseed_for_worker, train_transforms
from data_prep.tileset import read_png
from train.decoded_tiles import read_tile_image

IGNORE = 255  # mmseg's ignore index (decode heads' default), kept through the FTU mapping
# class index -> FTU mask value, as one lookup table (0 background, 1-254 FTU, 255 ignored)
_FTU_TABLE = np.where(np.arange(256) == IGNORE, IGNORE, np.arange(256) > 0).astype(np.uint8)


@TRANSFORMS.register_module()
class LoadTileImage(BaseTransform):
    """Read a tile PNG as RGB uint8: mmcv's loader gives BGR, our augmentations and normalisation expect RGB.

    decoded_copies: read each tile through its decoded copy (train.decoded_tiles: TILES/decoded/, written on the first
    read, 3 MB per 1024 px tile), so epochs after the first skip the PNG decode (25 ms of a 1024 px
    sample); False decodes the PNG every time.
    """

    def __init__(self, decoded_copies: bool = True) -> None:
        self.decoded_copies = decoded_copies

    def transform(self, results: dict) -> dict:
        path = Path(results["img_path"])
        img = read_tile_image(path) if self.decoded_copies else read_png(path)
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


@TRANSFORMS.register_module()
class FtuMask(BaseTransform):
    """Class-index mask (0 background, 1-5 organs, 255 ignored) -> FTU mask (0 background, 1 FTU, 255 ignored).

    For the 2-class models (1st place's SegFormers): the tile sets keep the organ in the mask for the multiclass
    UperNet, and the organ of a test image comes from test.csv, so a binary model need not learn it.
    """

    def transform(self, results: dict) -> dict:
        mask = results["gt_seg_map"]
        if mask.dtype != np.uint8:
            raise TypeError(f"FtuMask needs a uint8 class-index mask, got {mask.dtype}")
        results["gt_seg_map"] = cv2.LUT(mask, _FTU_TABLE)  # one pass (np.where + astype made three)
        return results
