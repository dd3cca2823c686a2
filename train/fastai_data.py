"""Tile-index datasets and fastai DataLoaders for the binary UNet trainer.

Two samplers (FastaiConfig.sampler):
- "crops" (the default recipe): random crops of the whole images resampled to cfg.pixel_size um/px
  (tile-set rows with source "scaled", data_prep.tiles --scaled P), organ-balanced and partly centred on FTUs
  (train.crops). Validation crops are a fixed set drawn the same way from fold k's images. With
  stain_copy_share > 0 a training image's stain copies (source "stain", data_prep.stain_copies) join it.
- "tiles": the tile set's own tiles of every fold but k (original tiles of the configured levels plus LPB
  blends); validation tiles are fold k's finest-split tiles.
Either sampler also trains on the tile set's extra data (source "extra", fold -1: data_prep.tiles --extra-data,
e.g. pseudo-labels) when use_extra_data; its IGNORE_INDEX pixels reach the loss as targets it ignores.
Either way the monitored Dice is measured on whole validation images by the submission path
(train.validation.kernel_validation); the fastai valid_loss only watches over-fitting on tiles.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.distributed import DistributedDL
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from data_prep.augment import reseed, reseed_for_worker, train_transforms, valid_transforms, worker_seed
from data_prep.tileset import IGNORE_INDEX, read_png, whole_image_rows
from inference.checkpoint import IMAGENET_MEAN, IMAGENET_STD
from inference.input_modes import project_image
from inference.tiling import resize_image
from train.configs.fastai.base import FastaiConfig
from train.crops import CropSampler, CropSettings, ScaledImage, ftu_points
from train.validation import validation_tiles

log = logging.getLogger("train.fastai_data")

VALID_CROPS_PER_IMAGE = 4

MEAN = np.array(IMAGENET_MEAN, np.float32)
STD = np.array(IMAGENET_STD, np.float32)


# Every uint8 value's normalised float32, one (1, 256) table per channel: the same float32 arithmetic as
# (rgb / 255 - mean) / std.
_NORMALISED = [
    np.ascontiguousarray(((np.arange(256, dtype=np.float32) / np.float32(255.0) - MEAN[c]) / STD[c])[None])
    for c in range(3)
]


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) RGB to float32 (..., 3, H, W) with ImageNet mean/std on rgb / 255.

    By table lookup (cv2.LUT) of each channel plane straight into the channel-first layout: the values of the float
    arithmetic, without its four passes over every pixel and strided copy (about 5x faster on a 1024 px crop,
    benchmarks/data_pipeline.py).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim < 3 or images.shape[-1] != 3:
        raise TypeError(f"normalise needs (..., H, W, 3) uint8 RGB, got {images.dtype} {images.shape}")
    height, width = images.shape[-3:-1]
    out = np.empty((*images.shape[:-3], 3, height, width), np.float32)
    for image, planes in zip(images.reshape(-1, height, width, 3), out.reshape(-1, 3, height, width), strict=True):
        for c, channel in enumerate(cv2.split(image)):
            cv2.LUT(channel, _NORMALISED[c], dst=planes[c])
    return out


def split_rows(index: pd.DataFrame, fold: int, cfg: FastaiConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, validation rows) of a tile index for fold k (-1: train on all, no validation)."""
    folds = sorted(int(f) for f in index["fold"].unique())
    if fold != -1 and fold not in folds:
        raise ValueError(f"fold {fold} is not in the tile set (folds {folds}); use one of them or -1 for all")
    if cfg.sampler == "crops":
        return _scaled_rows(index, fold, cfg)
    original = index["source"] == "original"
    is_split = index["split"] > 0
    levels = pd.Series(True, index=index.index)
    if cfg.train_splits is not None:
        levels &= ~is_split | index["split"].isin(cfg.train_splits)
    if cfg.train_reduces is not None:
        levels &= is_split | index["reduce"].isin(cfg.train_reduces)
    extra = (index["source"] == "extra") & ~whole_image_rows(index) & levels & cfg.use_extra_data
    chosen = (original & levels) | ((index["source"] == "lpb") & cfg.use_lpb) | extra
    train = index[chosen & ((index["fold"] != fold) | (fold == -1))].reset_index(drop=True)
    valid = index[original & (index["fold"] == fold)].reset_index(drop=True)
    if train.empty:
        raise ValueError(
            f"no training tiles for fold {fold} with train_splits={cfg.train_splits}, "
            f"train_reduces={cfg.train_reduces}; the tile set has splits {sorted(index['split'].unique())} "
            f"and reduces {sorted(index['reduce'].unique())}"
        )
    return train, valid


def _scaled_rows(index: pd.DataFrame, fold: int, cfg: FastaiConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The whole-image rows at cfg.pixel_size: (fold != k with their stain copies and extra rows, fold == k)."""
    scaled = index[whole_image_rows(index)]
    scaled = scaled[np.isclose(scaled["tile_pixel_size"].astype(float), float(cfg.pixel_size), rtol=1e-4)]
    sources = ["scaled"] + ["stain"] * (cfg.stain_copy_share > 0) + ["extra"] * cfg.use_extra_data
    rows = scaled[scaled["source"] == "scaled"]
    if rows.empty:
        present = sorted(scaled["tile_pixel_size"].astype(float).unique())
        raise ValueError(
            f"sampler 'crops' trains at pixel_size {cfg.pixel_size} um/px but the tile set has no whole images at "
            f"that scale (it has {present or 'none'}); rebuild it with python -m data_prep.tiles ... "
            f"--scaled {cfg.pixel_size:g}"
        )
    train = scaled[scaled["source"].isin(sources) & ((scaled["fold"] != fold) | (fold == -1))]
    if cfg.stain_copy_share > 0 and not train["source"].eq("stain").any():
        log.warning("stain_copy_share %g, but the tile set has no stain copies at %g um/px: every crop comes from "
                    "the images as they are; add copies with python -m data_prep.stain_copies --tiles TILES "
                    "--targets H&E_PAS_IMAGES", cfg.stain_copy_share, cfg.pixel_size)
    return train.reset_index(drop=True), rows[rows["fold"] == fold].reset_index(drop=True)


def load_scaled_images(rows: pd.DataFrame, tiles_dir: Path, seed: int = 0) -> list[ScaledImage]:
    """Read the whole-image rows into memory with their FTU points (train.crops); stain copies join their parent."""
    rng = np.random.default_rng(seed)
    images: dict[str, ScaledImage] = {}
    copies = rows[rows["source"] == "stain"] if "source" in rows else rows.iloc[:0]
    for row in tqdm(list(rows.drop(copies.index).itertuples(index=False)), desc="load images", unit="img",
                    leave=False):  # fmt: skip
        mask = read_png(Path(tiles_dir) / row.mask_path, mask=True)
        image = read_png(Path(tiles_dir) / row.image_path)
        images[row.tile_id] = ScaledImage(str(row.image_id), str(row.organ), image, mask, ftu_points(mask, rng))
    for row in tqdm(list(copies.itertuples(index=False)), desc="load stain copies", unit="img", leave=False):
        if row.parents in images:  # a copy of an image not trained on (another fold) stays out
            images[row.parents].copies.append(read_png(Path(tiles_dir) / row.image_path))
    return list(images.values())


def crop_settings(cfg: FastaiConfig) -> CropSettings:
    """The crop sampler's settings of a config."""
    return CropSettings(
        size=cfg.tile_size,
        ftu_share=cfg.ftu_share,
        organ_balance=cfg.organ_balance,
        scale_range=cfg.scale_range,
        lowres_prob=cfg.lowres_prob,
        lowres_range=cfg.lowres_range,
        context=cfg.context,
        stain_copy_share=cfg.stain_copy_share,
    )


def _sample(
    image: np.ndarray, mask: np.ndarray, context: np.ndarray | None = None, input_mode: str = "rgb"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised image (3 or, with a context view, 6, S, S), FTU mask (1, S, S)) float32 tensors.

    input_mode: what the network sees (inference.input_modes, as the Predictor applies it at inference).
    """
    image = project_image(image, input_mode)
    if context is not None:
        context = project_image(context, input_mode)
    x = normalise(image) if context is None else np.concatenate([normalise(image), normalise(context)])
    target = (mask > 0).astype(np.float32)
    target[mask == IGNORE_INDEX] = IGNORE_INDEX  # the loss's ignore_index (pseudo-label bands)
    return torch.from_numpy(x), torch.from_numpy(target[None])


class CropDataset(Dataset):
    """n random crops (train.crops) per epoch, augmented; the item index is ignored.

    Crops and augmentations draw from generators seeded with torch's worker seed (data_prep.augment.worker_seed),
    which differs per DataLoader worker and per epoch, so workers never repeat each other and epochs never repeat.
    """

    def __init__(
        self, sampler: CropSampler, n: int, augment: str | None, histmatch_targets: tuple[str, ...] = (),
        input_mode: str = "rgb",
    ) -> None:  # fmt: skip
        self.sampler, self.n, self.input_mode = sampler, n, input_mode
        self.transform = train_transforms(augment, histmatch_targets=histmatch_targets) if augment else None
        if self.transform is not None and sampler.settings.context > 1:
            self.transform.add_targets({"context": "image"})  # the context view gets the crop's flips and colours
        self._seed: int | None = None
        self._rng = np.random.default_rng(0)

    def __len__(self) -> int:
        return self.n

    def generator(self) -> np.random.Generator:
        """This worker's generator, re-seeded with the augmentations when torch's worker seed changes."""
        seed = worker_seed()
        if seed != self._seed:
            self._seed, self._rng = seed, np.random.default_rng(seed)
            if self.transform is not None:
                reseed(self.transform, seed)
        return self._rng

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask, context = self.sampler.sample(self.generator())
        if self.transform is not None:
            views = {} if context is None else {"context": context}
            out = self.transform(image=image, mask=mask, **views)
            image, mask, context = out["image"], out["mask"], out.get("context")
        return _sample(image, mask, context, self.input_mode)


class FixedCropDataset(Dataset):
    """A fixed set of crops drawn once with a seed (validation: the same crops every epoch)."""

    def __init__(self, sampler: CropSampler, per_image: int, seed: int, input_mode: str = "rgb") -> None:
        rng = np.random.default_rng(seed)
        self.input_mode = input_mode
        self.items = [sampler.crop(image, rng) for image in sampler.images for _ in range(per_image)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _sample(*self.items[i], input_mode=self.input_mode)


class TileDataset(Dataset):
    """(normalised image (3, S, S) float32, FTU mask (1, S, S) float32) per tile-index row."""

    def __init__(
        self, rows: pd.DataFrame, tiles_dir: Path, size: int, augment: str | None,
        histmatch_targets: tuple[str, ...] = (), input_mode: str = "rgb",
    ) -> None:  # fmt: skip
        self.input_mode = input_mode
        self.image_paths = [Path(tiles_dir) / p for p in rows["image_path"]]
        self.mask_paths = [Path(tiles_dir) / p for p in rows["mask_path"]]
        self.size = size
        self.transform = (
            train_transforms(augment, histmatch_targets=histmatch_targets) if augment else valid_transforms()
        )
        self._aug_seed: int | None = None

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._aug_seed = reseed_for_worker(self.transform, self._aug_seed)
        image = resize_image(read_png(self.image_paths[i]), self.size, self.size)
        mask = resize_image(read_png(self.mask_paths[i], mask=True), self.size, self.size, nearest=True)
        out = self.transform(image=image, mask=mask)
        return _sample(out["image"], out["mask"], input_mode=self.input_mode)


class SampledDataLoader(DataLoader):
    """A shuffled fastai DataLoader drawing `n` random items per epoch from a larger dataset.

    fastai's own `n` keeps the first n items; short demo epochs must still see every tile over time.
    """

    def get_idxs(self) -> Iterable[int]:
        if not self.shuffle or self.n == len(self.dataset):
            return super().get_idxs()
        return itertools.islice(self._passes(), self.n)

    def _passes(self) -> Iterator[int]:
        """Shuffled passes over the tiles, lazily: a time-budget epoch asks for far more items than it uses."""
        while True:
            yield from self.rng.sample(range(len(self.dataset)), len(self.dataset))


class CropDataLoader(DataLoader):
    """A fastai DataLoader over a CropDataset: the indices are a lazy range (items are random anyway), so a long
    time-budget epoch costs nothing up front."""

    def get_idxs(self) -> range:
        return range(self.n)


class CPUDistributedDL(DistributedDL):
    """fastai's DistributedDL with the index broadcast kept on CPU, for the gloo backend (no CUDA)."""

    def _broadcast(self, t: list[int], rank: int) -> list[int]:
        tensor = torch.tensor(t, dtype=torch.long)
        torch.distributed.broadcast(tensor, rank)
        return tensor.tolist()


def make_dataloaders(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    tiles_dir: Path,
    cfg: FastaiConfig,
    device: torch.device,
    items_per_epoch: int | None = None,
) -> DataLoaders:
    """fastai DataLoaders over the training samples (augmented) and the validation tiles or crops.

    items_per_epoch overrides the epoch length (a time budget ends epochs by the clock instead).
    """
    common = dict(bs=cfg.bs, num_workers=cfg.num_workers, pin_memory=device.type == "cuda", device=device)
    if cfg.sampler == "crops":
        settings = crop_settings(cfg)
        sampler = CropSampler(load_scaled_images(train, tiles_dir, cfg.seed), settings)
        n = items_per_epoch or (cfg.batches_per_epoch or max(1, len(sampler.images) // cfg.bs)) * cfg.bs
        train_ds = CropDataset(sampler, n, cfg.augment, cfg.histmatch_targets, cfg.input_mode)
        train_dl = CropDataLoader(train_ds, shuffle=False, drop_last=True, **common)
        if len(valid):
            valid_sampler = CropSampler(load_scaled_images(valid, tiles_dir, cfg.seed), settings)
            valid_ds = FixedCropDataset(valid_sampler, VALID_CROPS_PER_IMAGE, cfg.seed, cfg.input_mode)
        else:
            valid_ds = []
        return DataLoaders(train_dl, DataLoader(valid_ds, shuffle=False, **common), device=device)
    train_ds = TileDataset(train, tiles_dir, cfg.tile_size, cfg.augment, cfg.histmatch_targets, cfg.input_mode)
    valid_rows = validation_tiles(valid, cfg.valid_split) if len(valid) else valid
    valid_ds = TileDataset(valid_rows, tiles_dir, cfg.tile_size, None, input_mode=cfg.input_mode)
    n = len(train_ds) if cfg.batches_per_epoch is None else min(len(train_ds), cfg.batches_per_epoch * cfg.bs)
    if items_per_epoch:
        n = items_per_epoch
    train_dl = SampledDataLoader(train_ds, n=n, shuffle=True, drop_last=n >= 2 * cfg.bs, **common)
    valid_dl = DataLoader(valid_ds, shuffle=False, **common)
    return DataLoaders(train_dl, valid_dl, device=device)
