"""Full-image validation Dice on a hand-made tile set where the FTU is written into the red channel."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from inference.tiling import split_boxes
from train.validation import full_image_dice, iter_full_images

SIZE = 32


def _image_and_mask(height: int, width: int, boxes: list[tuple[int, int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image whose red channel is 255 exactly on the FTU mask (class 1 = kidney)."""
    mask = np.zeros((height, width), np.uint8)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = 1
    image = np.full((height, width, 3), 60, np.uint8)
    image[..., 0] = np.where(mask > 0, 255, 0)
    return image, mask


def _write_tiles(out: Path, image_id: str, organ: str, image: np.ndarray, mask: np.ndarray, splits, reduces) -> list:
    """Write contract-format tiles (split n x n and padded reduce tiles) of one image; return index rows."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    height, width = mask.shape
    rows = []

    def add(tile_image, tile_mask, split, reduce, box):
        tile_id = f"{image_id}_s{split}_r{reduce}_{len(rows)}"
        cv2.imwrite(str(out / f"images/{tile_id}.png"), cv2.cvtColor(tile_image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out / f"masks/{tile_id}.png"), tile_mask)
        x0, y0, x1, y1 = box
        rows.append(
            dict(
                tile_id=tile_id,
                image_id=image_id,
                organ=organ,
                data_source="HPA",
                fold=0,
                split=split,
                reduce=reduce,
                x0=x0,
                y0=y0,
                x1=x1,
                y1=y1,
                fg_fraction=float((tile_mask > 0).mean()),
                image_path=f"images/{tile_id}.png",
                mask_path=f"masks/{tile_id}.png",
                source="original",
                img_height=height,
                img_width=width,
                tile_pixel_size=0.4 * (x1 - x0) / SIZE,
            )
        )

    for n in splits:
        for x0, y0, x1, y1 in split_boxes(height, width, n):
            crop, crop_mask = image[y0:y1, x0:x1], mask[y0:y1, x0:x1]
            add(
                cv2.resize(crop, (SIZE, SIZE), interpolation=cv2.INTER_AREA),
                cv2.resize(crop_mask, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST),
                n,
                0,
                (x0, y0, x1, y1),
            )
    for r in reduces:
        small = cv2.resize(image, (width // r, height // r), interpolation=cv2.INTER_AREA)
        small_mask = cv2.resize(mask, (width // r, height // r), interpolation=cv2.INTER_NEAREST)
        pad_h, pad_w = -small.shape[0] % SIZE, -small.shape[1] % SIZE
        small = np.pad(small, ((0, pad_h), (0, pad_w), (0, 0)))
        small_mask = np.pad(small_mask, ((0, pad_h), (0, pad_w)))
        for y in range(0, small.shape[0], SIZE):
            for x in range(0, small.shape[1], SIZE):
                box = (x * r, y * r, (x + SIZE) * r, (y + SIZE) * r)
                add(small[y : y + SIZE, x : x + SIZE], small_mask[y : y + SIZE, x : x + SIZE], 0, r, box)
    return rows


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """Three images (square and not) with split 1/2 tiles and padded reduce-2 tiles; FTU edges on a 12 px grid."""
    out = tmp_path_factory.mktemp("tiles")
    rows = []
    image, mask = _image_and_mask(64, 64, [(8, 8, 24, 24), (40, 36, 60, 56)])
    rows += _write_tiles(out, "img_a", "kidney", image, mask, splits=(1, 2), reduces=(2,))
    image, mask = _image_and_mask(96, 96, [(0, 0, 36, 24), (48, 60, 96, 96)])
    rows += _write_tiles(out, "img_b", "lung", image, mask, splits=(1, 2), reduces=(2,))
    image, mask = _image_and_mask(64, 128, [(12, 12, 48, 36), (96, 24, 120, 60)])
    rows += _write_tiles(out, "img_c", "lung", image, mask, splits=(1, 2), reduces=(2,))
    return out, pd.DataFrame(rows)


def _perfect(batch: np.ndarray) -> np.ndarray:
    return (batch[..., 0] > 127).astype(np.float32)


def _empty(batch: np.ndarray) -> np.ndarray:
    return np.zeros(batch.shape[:3], np.float32)


@pytest.mark.parametrize("split", [None, 1, 2, 0])
def test_perfect_predictor_scores_one(tiles, split) -> None:
    out, index = tiles
    result = full_image_dice(_perfect, index, out, split=split, progress=False)
    assert result["dice"] == pytest.approx(1.0)
    assert set(result["per_image"]) == {"img_a", "img_b", "img_c"}
    assert result["per_organ"] == {"kidney": pytest.approx(1.0), "lung": pytest.approx(1.0)}


def test_empty_predictor_scores_zero(tiles) -> None:
    out, index = tiles
    assert full_image_dice(_empty, index, out, progress=False)["dice"] == 0.0


def test_half_wrong_predictor_scores_between(tiles) -> None:
    out, index = tiles

    def left_half(batch: np.ndarray) -> np.ndarray:
        probs = _perfect(batch)
        probs[:, :, : batch.shape[2] // 2] = 0.0
        return probs

    result = full_image_dice(left_half, index, out, split=1, progress=False)
    assert 0.0 < result["dice"] < 1.0


def test_default_level_is_finest_split_and_canvas_at_tile_resolution(tiles) -> None:
    out, index = tiles
    images = {im.image_id: im for im in iter_full_images(_perfect, index, out, progress=False)}
    # split 2 of a 64 px image gives 32 px boxes for 32 px tiles: full resolution
    assert images["img_a"].scale == 1.0
    assert images["img_a"].prob.shape == (64, 64)
    assert images["img_b"].prob.shape == images["img_b"].truth.shape
    coarse = {im.image_id: im for im in iter_full_images(_perfect, index, out, split=1, progress=False)}
    assert coarse["img_a"].scale == pytest.approx(0.5)
    assert coarse["img_a"].prob.shape == (32, 32)


def test_predict_output_at_other_resolution_is_resized(tiles) -> None:
    out, index = tiles

    def half_res(batch: np.ndarray) -> np.ndarray:
        return np.stack(
            [cv2.resize(p, (SIZE // 2, SIZE // 2), interpolation=cv2.INTER_NEAREST) for p in _perfect(batch)]
        )

    assert full_image_dice(half_res, index, out, split=2, progress=False)["dice"] > 0.9


def test_missing_split_and_bad_predict_fail_loudly(tiles) -> None:
    out, index = tiles
    with pytest.raises(ValueError, match="no tiles at split=3"):
        full_image_dice(_perfect, index, out, split=3, progress=False)
    with pytest.raises(ValueError, match="expected \\(N, H, W\\)"):
        full_image_dice(lambda b: np.zeros(len(b)), index, out, progress=False)
    with pytest.raises(ValueError, match="no validation tiles"):
        full_image_dice(_perfect, index[index["source"] == "lpb"], out, progress=False)
