"""Validation Dice of whole images, measured the way the kernel predicts.

kernel_validation runs the submission path itself (inference.predict.predict_one with inference.predict's
default Options: the same Predictor, scale rule, sliding window, blending, threshold and post-processing) on
the original validation images, so the recorded CV, the OOF maps and thresholds tuned on them describe what
`inference.predict` submits. full_image_dice (older: tiles of one level pasted back) is kept for callers
that validate on a tile set alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from data_prep.tiles import read_png
from inference.ensemble import Member
from inference.metric import dice
from inference.predict import Options, _images, predict_one
from inference.rle import decode
from inference.score import summarise
from inference.tiling import reassemble

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass
class FullImage:
    """One validation image reassembled from its tiles at `scale` times its original size."""

    image_id: str
    organ: str
    data_source: str
    img_height: int
    img_width: int
    scale: float
    prob: np.ndarray  # (h, w) float32 FTU probability
    truth: np.ndarray  # (h, w) bool FTU mask


def _level_rows(rows: pd.DataFrame, split: int | None) -> pd.DataFrame:
    """Rows of one image at one tile level: `split` n>0, 0 = the finest reduce tiles, None = the finest split."""
    splits = rows.loc[rows["split"] > 0, "split"]
    level = split if split is not None else (int(splits.max()) if len(splits) else 0)
    chosen = rows[rows["split"] == level]
    if level == 0 and not chosen.empty:
        chosen = chosen[chosen["reduce"] == chosen["reduce"].min()]
    if chosen.empty:
        raise ValueError(
            f"full_image_dice: image {rows['image_id'].iloc[0]} has no tiles at split={split}; "
            f"pass split=None (finest present) or rebuild the tiles with that split"
        )
    return chosen


def _original(valid_index: pd.DataFrame) -> pd.DataFrame:
    rows = valid_index[valid_index["source"] == "original"] if "source" in valid_index else valid_index
    if rows.empty:
        raise ValueError("full_image_dice: no validation tiles (source == 'original') in the index given")
    return rows


def validation_tiles(valid_index: pd.DataFrame, split: int | None = None) -> pd.DataFrame:
    """The validation rows full_image_dice predicts: each image's tiles at one level (see iter_full_images)."""
    rows = _original(valid_index)
    parts = [_level_rows(group, split) for _, group in rows.groupby("image_id", sort=False)]
    return pd.concat(parts).reset_index(drop=True)


def iter_full_images(
    predict: Predict,
    valid_index: pd.DataFrame,
    tiles_dir: Path,
    split: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> Iterator[FullImage]:
    """Predict each validation image's tiles at one level and yield the reassembled probability and truth.

    The canvas scale is the tiles' own resolution (tile pixels per original pixel, at most 1), so no
    prediction is upsampled beyond what the model saw. `predict` may return maps at any resolution.
    """
    tiles_dir = Path(tiles_dir)
    rows = _original(valid_index)
    image_ids = list(dict.fromkeys(rows["image_id"]))
    for image_id in tqdm(image_ids, desc="full-image validation", leave=False, disable=not progress):
        level = _level_rows(rows[rows["image_id"] == image_id], split)
        images = [read_png(tiles_dir / p) for p in level["image_path"]]
        masks = [(read_png(tiles_dir / p, mask=True) > 0).astype(np.float32) for p in level["mask_path"]]
        probs: list[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            batch = np.stack(images[start : start + batch_size])
            out = np.asarray(predict(batch), dtype=np.float32)
            if out.ndim != 3 or len(out) != len(batch):
                raise ValueError(f"predict returned shape {out.shape} for a batch of {len(batch)}; expected (N, H, W)")
            probs.extend(out)
        boxes = [tuple(int(v) for v in box) for box in level[["x0", "y0", "x1", "y1"]].to_numpy()]
        first = level.iloc[0]
        height, width = int(first["img_height"]), int(first["img_width"])
        box_side = float(np.median([x1 - x0 for x0, _, x1, _ in boxes]))
        scale = min(1.0, images[0].shape[1] / box_side)
        prob = reassemble(probs, boxes, height, width, scale=scale)
        truth = reassemble(masks, boxes, height, width, scale=scale, nearest=True) >= 0.5
        yield FullImage(
            str(image_id), str(first["organ"]), str(first["data_source"]), height, width, scale, prob, truth
        )


def full_image_dice(
    predict: Predict,
    valid_index: pd.DataFrame,
    tiles_dir: Path,
    threshold: float = 0.5,
    split: int | None = None,
    *,
    batch_size: int = 8,
    on_image: Callable[[FullImage], None] | None = None,
    progress: bool = True,
) -> dict:
    """Mean Dice over validation images reassembled from tile predictions (see iter_full_images).

    `predict` maps a uint8 batch (N, H, W, 3) to FTU probabilities (N, h, w); `split` picks the tile
    level (None: each image's finest split, 0: its finest reduce tiles). `on_image` sees every
    reassembled image, e.g. to save out-of-fold probabilities.
    """
    per_image: dict[str, float] = {}
    organs: dict[str, list[float]] = {}
    for image in iter_full_images(predict, valid_index, tiles_dir, split, batch_size, progress):
        score = dice(image.prob >= threshold, image.truth)
        per_image[image.image_id] = score
        organs.setdefault(image.organ, []).append(score)
        if on_image is not None:
            on_image(image)
    return {
        "dice": float(np.mean(list(per_image.values()))),
        "per_image": per_image,
        "per_organ": {organ: float(np.mean(scores)) for organ, scores in sorted(organs.items())},
        "n": len(per_image),
        "threshold": threshold,
    }


@dataclass
class ValidationImage:
    """One validation image's submission-path result at full resolution."""

    image_id: int
    organ: str
    data_source: str
    probability: np.ndarray  # (H, W) float32 ensemble FTU probability
    truth: np.ndarray  # (H, W) bool
    dice: float


def kernel_validation(
    members: list[Member],
    rows: pd.DataFrame,
    image_dir: Path,
    options: Options | None = None,
    *,
    on_image: Callable[[ValidationImage], None] | None = None,
    progress: bool = True,
) -> dict:
    """Dice of the submission path on whole validation images: overall, per organ, per source, per image.

    rows are train.csv rows (inference.tables.load_train) of the validation images; image_dir holds
    <id>.tiff. options defaults to inference.predict's defaults. An unreadable or wrongly sized image is an
    error here (training data must be sound), unlike in the submission loop. on_image sees every image,
    e.g. to save out-of-fold maps.
    """
    options = Options() if options is None else options
    scores = []
    images = _images(rows, Path(image_dir), options.stain_reference)
    for row, image in tqdm(images, total=len(rows), desc="validation", unit="img", leave=False, disable=not progress):
        if isinstance(image, Exception):
            raise image
        h, w = int(row.img_height), int(row.img_width)
        if image.shape[:2] != (h, w):
            raise ValueError(f"validation image {row.id} is {image.shape[:2]}, train.csv says {(h, w)}")
        rle, decision = predict_one(
            image, row.organ, float(row.pixel_size), members, options, data_source=row.data_source, image_id=row.id
        )
        truth = decode(row.rle, h, w).astype(bool)
        score = dice(decode(rle, h, w), truth)
        scores.append({"id": int(row.id), "organ": row.organ, "data_source": row.data_source, "dice": score})
        if on_image is not None:
            on_image(ValidationImage(int(row.id), row.organ, row.data_source, decision.probability, truth, score))
    if not scores:
        raise ValueError("kernel_validation: no validation rows")
    result = summarise(pd.DataFrame(scores))
    result["threshold"] = options.threshold
    return result


def write_oof(image: ValidationImage, folder: Path, max_side: int) -> dict:
    """Save one validation image's probability (float16 .npy) and truth (0/255 PNG) at <= max_side px."""
    prob, truth = image.probability, image.truth.astype(np.uint8)
    height, width = prob.shape
    shrink = min(1.0, max_side / max(prob.shape))
    if shrink < 1.0:
        size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
        prob = cv2.resize(prob, size, interpolation=cv2.INTER_AREA)
        truth = cv2.resize(truth, size, interpolation=cv2.INTER_NEAREST)
    np.save(folder / f"{image.image_id}.npy", prob.astype(np.float16))
    if not cv2.imwrite(str(folder / f"{image.image_id}_mask.png"), truth * 255):
        raise OSError(f"cannot write {folder / f'{image.image_id}_mask.png'}")
    return dict(
        image_id=image.image_id,
        organ=image.organ,
        data_source=image.data_source,
        img_height=height,
        img_width=width,
        height=prob.shape[0],
        width=prob.shape[1],
        prob_path=f"{image.image_id}.npy",
        mask_path=f"{image.image_id}_mask.png",
    )
