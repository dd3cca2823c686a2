"""Tile sets: geometry of split and reduce tiles, folds, class masks, resumability and input checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from data_prep.tiles import ImageSizeError, build_tiles
from data_prep.tileset import INDEX_COLUMNS, TileSetError, load_index, read_tile, source_data_dir, tile_paths
from inference.io import read_image, write_image
from inference.organs import class_index
from inference.rle import decode, encode
from inference.tiling import reassemble, scaled_size, window_starts


def _one_image_dataset(tmp_path: Path, demo_data: Path, demo_folds: Path, image_id: int, side: int) -> Path:
    """A one-image copy of a demo image, resized to side x side so that split parts are integer-aligned."""
    train = pd.read_csv(demo_data / "train.csv")
    row = train[train["id"] == image_id].iloc[0].copy()
    image = read_image(demo_data / "train_images" / f"{image_id}.tiff")
    mask = decode(row["rle"], row["img_height"], row["img_width"])
    out = tmp_path / "data"
    (out / "train_images").mkdir(parents=True)
    write_image(
        out / "train_images" / f"{image_id}.tiff", cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
    )
    row["rle"] = encode(cv2.resize(mask, (side, side), interpolation=cv2.INTER_NEAREST))
    row["img_height"] = row["img_width"] = side
    pd.DataFrame([row]).to_csv(out / "train.csv", index=False)
    shutil.copy(demo_folds, out / "folds.csv")
    return out


def test_index_columns_and_counts(demo_data: Path, demo_folds: Path, demo_tiles: Path) -> None:
    index = load_index(demo_tiles)
    assert tuple(index.columns) == INDEX_COLUMNS
    assert list(index.columns[:18]) == (
        "tile_id,image_id,organ,data_source,fold,split,reduce,x0,y0,x1,y1,fg_fraction,image_path,mask_path,"
        "source,img_height,img_width,tile_pixel_size"
    ).split(",")
    train = pd.read_csv(demo_data / "train.csv")
    assert set(index["image_id"]) == set(train["id"])
    assert (index.groupby("image_id").size() == 1 + 4 + 1).all()  # splits (1, 2) and one scaled whole image
    assert index["tile_id"].is_unique
    paths = [tile_paths(t) for t in index["tile_id"]]
    assert [p[0] for p in paths] == list(index["image_path"]) and [p[1] for p in paths] == list(index["mask_path"])
    assert all((demo_tiles / p).is_file() for pair in paths for p in pair)
    assert set(index["source"]) == {"original", "scaled"}
    folds = pd.read_csv(demo_folds).set_index("id")["fold"]
    assert (index["fold"].to_numpy() == folds.loc[index["image_id"]].to_numpy()).all()


def test_scaled_rows_are_whole_images_at_the_pixel_size(demo_data: Path, demo_tiles: Path) -> None:
    index = load_index(demo_tiles)
    scaled = index[index["source"] == "scaled"]
    train = pd.read_csv(demo_data / "train.csv").set_index("id")
    assert len(scaled) == len(train) and np.allclose(scaled["tile_pixel_size"], 0.8)
    assert json.loads((demo_tiles / "tiles.json").read_text())["data_dir"] == str(demo_data.resolve())
    assert source_data_dir(demo_tiles) == demo_data.resolve()
    for _, row in scaled.iterrows():
        image, mask = read_tile(demo_tiles, row)
        r = train.loc[row["image_id"]]
        expected = scaled_size(r["img_height"], r["img_width"], r["pixel_size"] / 0.8)  # 0.4 -> 0.8: half size
        assert image.shape[:2] == mask.shape == expected == (round(r["img_height"] / 2), round(r["img_width"] / 2))
        truth = decode(r["rle"], r["img_height"], r["img_width"])
        assert (mask > 0).mean() == pytest.approx(truth.mean(), abs=0.02)
        assert (row["x0"], row["y0"], row["x1"], row["y1"]) == (0, 0, r["img_width"], r["img_height"])


def test_tiles_are_size_and_masks_class_valued(demo_data: Path, demo_tiles: Path) -> None:
    index = load_index(demo_tiles)
    index = index[index["source"] == "original"]
    for _, row in index.iterrows():
        image, mask = read_tile(demo_tiles, row)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert mask.shape == (128, 128) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, class_index(row["organ"])}
        assert (mask > 0).mean() == pytest.approx(row["fg_fraction"], abs=1e-6)
    whole = index[index["split"] == 1]
    assert (whole["fg_fraction"] > 0).all()  # every competition image holds an FTU


@pytest.mark.parametrize("n", [2, 3])
def test_split_tiles_reassemble_to_resized_image(tmp_path: Path, demo_data: Path, demo_folds: Path, n: int) -> None:
    image_id = int(pd.read_csv(demo_data / "train.csv")["id"].iloc[0])
    side, size = 96 * n, 64  # parts of 96 px resized to 64 px: a non-integer area ratio
    data = _one_image_dataset(tmp_path, demo_data, demo_folds, image_id, side)
    index = build_tiles(data, data / "folds.csv", tmp_path / "tiles", size=size, splits=(n,))
    assert len(index) == n * n
    tiles = [read_tile(tmp_path / "tiles", row) for _, row in index.iterrows()]
    boxes = list(index[["x0", "y0", "x1", "y1"]].itertuples(index=False, name=None))
    scale = n * size / side
    image = read_image(data / "train_images" / f"{image_id}.tiff")
    expected = cv2.resize(image, (n * size, n * size), interpolation=cv2.INTER_AREA).astype(np.float32)
    for c in range(3):
        canvas = reassemble([t[0][..., c] for t in tiles], boxes, side, side, scale=scale)
        assert np.abs(canvas - expected[..., c]).max() <= 1.0
    mask = decode(pd.read_csv(data / "train.csv")["rle"].iloc[0], side, side)
    mask_canvas = reassemble([t[1] for t in tiles], boxes, side, side, scale=scale, nearest=True)
    expected_mask = cv2.resize(mask, (n * size, n * size), interpolation=cv2.INTER_NEAREST)
    assert np.mean((mask_canvas > 0) == (expected_mask > 0)) > 0.99


def test_fourteen_tiles_per_image_for_splits_123(tmp_path: Path, demo_data: Path, demo_folds: Path) -> None:
    index = build_tiles(demo_data, demo_folds, tmp_path / "tiles", size=32, splits=(1, 2, 3), workers=2)
    assert (index.groupby("image_id").size() == 14).all()
    assert set(index["split"]) == {1, 2, 3} and set(index["reduce"]) == {0}
    for _, g in index.groupby(["image_id", "split"]):  # parts tile each image exactly
        row = g.iloc[0]
        area = ((g["x1"] - g["x0"]) * (g["y1"] - g["y0"])).sum()
        assert area == row["img_height"] * row["img_width"]


def test_reduce_tiles_cover_image_with_stride(tmp_path: Path, demo_data: Path, demo_folds: Path) -> None:
    size, reduce, overlap = 64, 2, 0.25
    index = build_tiles(
        demo_data, demo_folds, tmp_path / "tiles", size=size, splits=(), reduces=(reduce,), overlap=overlap,
        tissue_threshold=0.0,
    )  # fmt: skip
    stride = 48
    for image_id, g in index.groupby("image_id"):
        h, w = int(g["img_height"].iloc[0]), int(g["img_width"].iloc[0])
        rh, rw = round(h / reduce), round(w / reduce)
        # Tile origins in the reduced image are the window starts at the stated stride.
        xs = sorted({round(x / (w / rw)) for x in g["x0"]})
        ys = sorted({round(y / (h / rh)) for y in g["y0"]})
        assert xs == window_starts(rw, size, stride) and ys == window_starts(rh, size, stride), image_id
        assert all(b - a <= stride for a, b in zip(xs, xs[1:], strict=False))
        covered = np.zeros((h, w), bool)
        for x0, y0, x1, y1 in g[["x0", "y0", "x1", "y1"]].itertuples(index=False):
            assert x1 - x0 == pytest.approx(size * reduce, abs=2) and y1 - y0 == pytest.approx(size * reduce, abs=2)
            covered[y0:y1, x0:x1] = True
        assert covered.all(), image_id
        assert np.allclose(g["tile_pixel_size"], 0.4 * reduce)
        assert (g["split"] == 0).all() and (g["reduce"] == reduce).all()


def test_reduce_pads_small_image_by_reflection(tmp_path: Path, demo_data: Path, demo_folds: Path) -> None:
    image_id = int(pd.read_csv(demo_data / "train.csv")["id"].iloc[0])
    data = _one_image_dataset(tmp_path, demo_data, demo_folds, image_id, 100)
    index = build_tiles(
        data, data / "folds.csv", tmp_path / "tiles", size=64, splits=(), reduces=(2,), tissue_threshold=0
    )
    assert len(index) == 1
    row = index.iloc[0]
    assert (row["x0"], row["y0"], row["x1"], row["y1"]) == (0, 0, 128, 128)  # extends past the 100 px image
    tile, _ = read_tile(tmp_path / "tiles", row)
    small = cv2.resize(read_image(data / "train_images" / f"{image_id}.tiff"), (50, 50), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(tile[:50, :50], small)
    np.testing.assert_array_equal(tile[:50, 50:64], small[:, 48:34:-1])  # reflected without repeating the edge


def test_target_pixel_size_rescales_reduce_tiles(tmp_path: Path, demo_data: Path, demo_folds: Path) -> None:
    index = build_tiles(
        demo_data, demo_folds, tmp_path / "tiles", size=64, splits=(1,), reduces=(2,), target_pixel_size=0.2,
        tissue_threshold=0,
    )  # fmt: skip
    reduced = index[index["reduce"] == 2]
    assert np.allclose(reduced["tile_pixel_size"], 0.4)  # 0.2 um/px target, reduced by 2
    assert ((reduced["x1"] - reduced["x0"]) == 64).all()  # 0.4 um/px images: no net rescale
    whole = index[index["split"] == 1]
    assert np.allclose(whole["tile_pixel_size"], 0.4 * whole["img_width"] / 64, atol=1e-6)


def test_tissue_threshold_drops_blank_reduce_tiles(tmp_path: Path, demo_data: Path, demo_folds: Path) -> None:
    kept = build_tiles(demo_data, demo_folds, tmp_path / "a", size=32, splits=(1,), reduces=(2,), tissue_threshold=0)
    strict = build_tiles(
        demo_data, demo_folds, tmp_path / "b", size=32, splits=(1,), reduces=(2,), tissue_threshold=0.9
    )
    assert len(strict[strict["split"] == 1]) == len(kept[kept["split"] == 1])  # split tiles are never dropped
    dropped = set(kept["tile_id"]) - set(strict["tile_id"])
    assert dropped, "a 0.9 tissue threshold should drop some reduce tiles"
    gone = kept[kept["tile_id"].isin(dropped)]
    assert (gone["tissue_fraction"] < 0.9).all() and (gone["fg_fraction"] == 0).all()
    assert not any((tmp_path / "b" / "images" / f"{t}.png").exists() for t in dropped)


def test_rerun_skips_done_images_and_overwrite_redoes(tmp_path: Path, demo_data: Path, demo_folds: Path) -> None:
    out = tmp_path / "tiles"
    first = build_tiles(demo_data, demo_folds, out, size=32, splits=(1, 2))
    ids = first["image_id"].unique()
    part = out / "parts" / f"{ids[0]}.csv"
    tile = out / first["image_path"].iloc[0]
    stamps = part.stat().st_mtime_ns, tile.stat().st_mtime_ns
    part.unlink()  # as if the run had stopped during this image
    kept = out / "parts" / f"{ids[1]}.csv"
    kept_stamp = kept.stat().st_mtime_ns
    second = build_tiles(demo_data, demo_folds, out, size=32, splits=(1, 2))
    pd.testing.assert_frame_equal(first, second)
    assert part.is_file() and tile.stat().st_mtime_ns > stamps[1]  # the unfinished image was redone
    assert kept.stat().st_mtime_ns == kept_stamp  # finished ones were not
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    build_tiles(demo_data, demo_folds, out, size=32, splits=(1, 2))
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())  # nothing to do, nothing written
    with pytest.raises(TileSetError, match="--overwrite"):
        build_tiles(demo_data, demo_folds, out, size=48, splits=(1, 2))
    third = build_tiles(demo_data, demo_folds, out, size=32, splits=(1,), overwrite=True)
    assert len(third) == len(first) // 5 and (third["split"] == 1).all()
    assert len(list((out / "images").iterdir())) == len(third)  # the 2x2 tiles were removed
    assert all(p.stat().st_mtime_ns > t for p, t in mtimes.items() if p.exists())


def test_size_mismatch_names_the_file(tmp_path: Path, demo_data: Path, demo_folds: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    train = pd.read_csv(data / "train.csv")
    image_id = int(train["id"].iloc[3])
    train.loc[3, "img_height"] += 1
    train.to_csv(data / "train.csv", index=False)
    for workers in (1, 2):
        with pytest.raises(ImageSizeError, match=f"{image_id}.tiff.*img_height"):
            build_tiles(data, demo_folds, tmp_path / f"tiles{workers}", size=32, splits=(1,), workers=workers)


def test_image_without_fold_is_an_error(tmp_path: Path, demo_data: Path, demo_folds: Path) -> None:
    folds = pd.read_csv(demo_folds)
    folds.iloc[1:].to_csv(tmp_path / "folds.csv", index=False)
    with pytest.raises(TileSetError, match=f"no fold.*{folds['id'].iloc[0]}.*make_folds"):
        build_tiles(demo_data, tmp_path / "folds.csv", tmp_path / "tiles", size=32, splits=(1,))
