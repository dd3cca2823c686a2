"""Validation Dice of whole images, measured the way the kernel predicts, for both trainers.

kernel_validation runs the submission path itself (inference.predict.predict_one with inference.predict's
default Options: the same Predictor, scale rule, sliding window, blending, threshold and post-processing) on
the original validation images, read and stain-normalised by the kernel's own reader (inference.predict.table_images), so the recorded CV, the OOF maps and thresholds tuned on them describe what
`inference.predict` submits. validation_tiles picks the tiles a trainer's tile-level valid_loss watches.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from inference.atomic import write_json
from inference.engine.ensemble import Member
from inference.metric import dice
from inference.predict import Options, predict_one, save_probability, table_images
from inference.rle import decode
from inference.score import summarise
from inference.tiling import resize_image
from train.run_folder import json_safe


def _level_rows(rows: pd.DataFrame, split: int | None) -> pd.DataFrame:
    """Rows of one image at one tile level: `split` n>0, 0 = the finest reduce tiles, None = the finest split."""
    splits = rows.loc[rows["split"] > 0, "split"]
    level = split if split is not None else (int(splits.max()) if len(splits) else 0)
    chosen = rows[rows["split"] == level]
    if level == 0 and not chosen.empty:
        chosen = chosen[chosen["reduce"] == chosen["reduce"].min()]
    if chosen.empty:
        raise ValueError(
            f"validation tiles: image {rows['image_id'].iloc[0]} has no tiles at split={split}; "
            f"pass split=None (finest present) or rebuild the tiles with that split"
        )
    return chosen


def _original(valid_index: pd.DataFrame) -> pd.DataFrame:
    rows = valid_index[valid_index["source"] == "original"] if "source" in valid_index else valid_index
    if rows.empty:
        raise ValueError("validation tiles: none with source == 'original' in the index given")
    return rows


def validation_tiles(valid_index: pd.DataFrame, split: int | None = None) -> pd.DataFrame:
    """Each validation image's tiles at one level: split n > 0, 0 = the finest reduce tiles, None = the finest split."""
    rows = _original(valid_index)
    parts = [_level_rows(group, split) for _, group in rows.groupby("image_id", sort=False)]
    return pd.concat(parts).reset_index(drop=True)


RESULT = "result.json"  # written last into a kept validation's folder (validate_into)


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
    slots = table_images(rows, Path(image_dir), options.image_reference, options.max_image_side, prefetch=True)
    for slot in tqdm(slots, total=len(rows), desc="validation", unit="img", leave=False, disable=not progress):
        row, loaded = slot.row, slot.load()
        if loaded.error is not None:
            raise loaded.error
        image = loaded.seen
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


def _validate_with_oof(oof: Path, validate: Callable[..., dict], max_side: int) -> dict:
    oof.mkdir(parents=True)
    rows: list[dict] = []
    result = validate(on_image=lambda image: rows.append(write_oof(image, oof, max_side)))
    pd.DataFrame(rows).to_csv(oof / "index.csv", index=False)
    return result


def validate_into(folder: Path, validate: Callable[..., dict], max_side: int) -> dict:
    """Run validate(on_image=...) keeping its result and out-of-fold maps: FOLDER/oof/ (index.csv, maps, masks) and
    FOLDER/result.json, written last so that a folder without it is unfinished. Both trainers keep each validation
    this way and write the fold's metrics.json and oof/ from the best one's folder instead of validating again."""
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    result = _validate_with_oof(folder / "oof", validate, max_side)
    write_json(folder / RESULT, json_safe(result))
    return result


def saved_validation(folder: Path) -> tuple[dict, Path] | None:
    """(result, oof folder) of a validation validate_into finished in `folder`, else None."""
    path = Path(folder) / RESULT
    return (json.loads(path.read_text()), Path(folder) / "oof") if path.is_file() else None


def fold_validation(oof: Path, saved: tuple[dict, Path] | None, validate: Callable[..., dict],
                    max_side: int) -> dict:
    """The fold's oof/ and validation result: copied from a kept validation of the same weights (saved_validation's
    answer), else validate(on_image=...) now (weights no validation saw: an average, a stand-in checkpoint)."""
    oof = Path(oof)
    shutil.rmtree(oof, ignore_errors=True)
    if saved is None:
        return _validate_with_oof(oof, validate, max_side)
    result, kept = saved
    shutil.copytree(kept, oof)
    return result


def write_oof(image: ValidationImage, folder: Path, max_side: int) -> dict:
    """Save one validation image's probability (inference.predict --save-probs format) and truth (0/255 PNG)."""
    height, width = image.probability.shape
    save_probability(folder / f"{image.image_id}.npy", image.probability, max_side)
    saved = np.load(folder / f"{image.image_id}.npy", mmap_mode="r").shape  # the truth at the map's size
    truth = resize_image(image.truth.astype(np.uint8), *saved, nearest=True)
    if not cv2.imwrite(str(folder / f"{image.image_id}_mask.png"), truth * 255):
        raise OSError(f"cannot write {folder / f'{image.image_id}_mask.png'}")
    return dict(
        image_id=image.image_id,
        organ=image.organ,
        data_source=image.data_source,
        img_height=height,
        img_width=width,
        height=saved[0],
        width=saved[1],
        prob_path=f"{image.image_id}.npy",
        mask_path=f"{image.image_id}_mask.png",
    )
