"""Tile-index datasets and fastai DataLoaders for the binary UNet trainer.

Train rows are the tiles of every fold but k (original tiles of the configured levels plus LPB blends);
validation rows are fold k's original tiles at the level the full-image Dice uses, so the fastai
valid_loss and the Dice look at the same tiles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.distributed import DistributedDL
from torch.utils.data import Dataset

from data_prep.augment import train_transforms, valid_transforms
from data_prep.tiles import read_png
from inference.checkpoint import IMAGENET_MEAN, IMAGENET_STD
from inference.tiling import resize_image
from train.configs.fastai.base import FastaiConfig
from train.validation import validation_tiles

MEAN = np.array(IMAGENET_MEAN, np.float32)
STD = np.array(IMAGENET_STD, np.float32)


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) RGB to float32 (..., 3, H, W) with ImageNet mean/std on rgb / 255."""
    x = (images.astype(np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def split_rows(index: pd.DataFrame, fold: int, cfg: FastaiConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, validation rows) of a tile index for fold k (-1: train on all, no validation)."""
    folds = sorted(int(f) for f in index["fold"].unique())
    if fold != -1 and fold not in folds:
        raise ValueError(f"fold {fold} is not in the tile set (folds {folds}); use one of them or -1 for all")
    original = index["source"] == "original"
    is_split = index["split"] > 0
    levels = pd.Series(True, index=index.index)
    if cfg.train_splits is not None:
        levels &= ~is_split | index["split"].isin(cfg.train_splits)
    if cfg.train_reduces is not None:
        levels &= is_split | index["reduce"].isin(cfg.train_reduces)
    chosen = (original & levels) | ((index["source"] == "lpb") & cfg.use_lpb)
    train = index[chosen & (index["fold"] != fold)].reset_index(drop=True)
    valid = index[original & (index["fold"] == fold)].reset_index(drop=True)
    if train.empty:
        raise ValueError(
            f"no training tiles for fold {fold} with train_splits={cfg.train_splits}, "
            f"train_reduces={cfg.train_reduces}; the tile set has splits {sorted(index['split'].unique())} "
            f"and reduces {sorted(index['reduce'].unique())}"
        )
    return train, valid


class TileDataset(Dataset):
    """(normalised image (3, S, S) float32, FTU mask (1, S, S) float32) per tile-index row."""

    def __init__(self, rows: pd.DataFrame, tiles_dir: Path, size: int, augment: str | None) -> None:
        self.image_paths = [Path(tiles_dir) / p for p in rows["image_path"]]
        self.mask_paths = [Path(tiles_dir) / p for p in rows["mask_path"]]
        self.size = size
        self.transform = train_transforms(augment) if augment else valid_transforms()

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = resize_image(read_png(self.image_paths[i]), self.size, self.size)
        mask = resize_image(read_png(self.mask_paths[i], mask=True), self.size, self.size, nearest=True)
        out = self.transform(image=image, mask=mask)
        ftu = (out["mask"] > 0).astype(np.float32)[None]
        return torch.from_numpy(normalise(out["image"])), torch.from_numpy(ftu)


class SampledDataLoader(DataLoader):
    """A shuffled fastai DataLoader drawing `n` random items per epoch from a larger dataset.

    fastai's own `n` keeps the first n items; short demo epochs must still see every tile over time.
    """

    def get_idxs(self) -> list[int]:
        if not self.shuffle or self.n >= len(self.dataset):
            return super().get_idxs()
        return self.rng.sample(range(len(self.dataset)), self.n)


class CPUDistributedDL(DistributedDL):
    """fastai's DistributedDL with the index broadcast kept on CPU, for the gloo backend (no CUDA)."""

    def _broadcast(self, t: list[int], rank: int) -> list[int]:
        tensor = torch.tensor(t, dtype=torch.long)
        torch.distributed.broadcast(tensor, rank)
        return tensor.tolist()


def make_dataloaders(
    train: pd.DataFrame, valid: pd.DataFrame, tiles_dir: Path, cfg: FastaiConfig, device: torch.device
) -> DataLoaders:
    """fastai DataLoaders over the train tiles (augmented, shuffled) and the validation-level tiles."""
    train_ds = TileDataset(train, tiles_dir, cfg.tile_size, cfg.augment)
    valid_rows = validation_tiles(valid, cfg.valid_split) if len(valid) else valid
    valid_ds = TileDataset(valid_rows, tiles_dir, cfg.tile_size, None)
    n = len(train_ds) if cfg.batches_per_epoch is None else min(len(train_ds), cfg.batches_per_epoch * cfg.bs)
    common = dict(bs=cfg.bs, num_workers=cfg.num_workers, pin_memory=device.type == "cuda", device=device)
    train_dl = SampledDataLoader(train_ds, n=n, shuffle=True, drop_last=n >= 2 * cfg.bs, **common)
    valid_dl = DataLoader(valid_ds, shuffle=False, **common)
    return DataLoaders(train_dl, valid_dl, device=device)
