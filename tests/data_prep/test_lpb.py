"""Laplacian pyramid blending: exactness of the blend, mask composite, fold-safe pairing, resumability."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_prep.lpb import SplitSpec, add_lpb, blend, composite_mask, split_mask
from data_prep.tileset import TileSetError, load_index, read_tile

RNG = np.random.default_rng(0)
IMAGE_A = cv2.GaussianBlur(RNG.integers(0, 256, (96, 128, 3), dtype=np.uint8), (5, 5), 0)
IMAGE_B = RNG.integers(0, 256, (96, 128, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["left-right", "top-bottom", "line"])
def test_blend_with_itself_returns_the_image(mode: str) -> None:
    keep = split_mask(96, 128, SplitSpec(mode, 0.3, 0.7))
    np.testing.assert_array_equal(blend(IMAGE_A, IMAGE_A, keep, levels=5), IMAGE_A)


def test_blend_under_a_full_mask_is_exact() -> None:
    ones = np.ones((96, 128), bool)
    np.testing.assert_array_equal(blend(IMAGE_A, IMAGE_B, ones, levels=4), IMAGE_A)
    np.testing.assert_array_equal(blend(IMAGE_A, IMAGE_B, ~ones, levels=4), IMAGE_B)


def test_blend_is_soft_only_near_the_split() -> None:
    keep = split_mask(96, 128, SplitSpec("left-right", 0.5, 0.0))  # cut at x = 64
    out = blend(IMAGE_A, IMAGE_B, keep, levels=3).astype(int)
    assert np.abs(out[:, :40] - IMAGE_A[:, :40]).mean() < 2
    assert np.abs(out[:, 88:] - IMAGE_B[:, 88:]).mean() < 2
    middle = out[:, 60:68]
    assert np.abs(middle - IMAGE_A[:, 60:68]).mean() > 5 and np.abs(middle - IMAGE_B[:, 60:68]).mean() > 5


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (SplitSpec("left-right", 0.5, 0.9), lambda ys, xs: xs < 64),
        (SplitSpec("top-bottom", 0.0, 0.9), lambda ys, xs: ys < 24),
        (SplitSpec("line", 0.6, 0.5), lambda ys, xs: ys < 53),  # horizontal, 0.1 * 48 px below the centre
    ],
)
def test_blended_mask_matches_the_split(spec: SplitSpec, expected) -> None:
    keep = split_mask(96, 128, spec)
    ys, xs = np.mgrid[:96, :128]
    np.testing.assert_array_equal(keep, expected(ys, xs))
    first, second = np.full((96, 128), 2, np.uint8), np.zeros((96, 128), np.uint8)
    np.testing.assert_array_equal(composite_mask(first, second, keep), np.where(keep, 2, 0))


def test_too_many_levels_is_an_error() -> None:
    with pytest.raises(ValueError, match="at most 4"):
        blend(IMAGE_A[:32, :32], IMAGE_B[:32, :32], np.ones((32, 32), bool), levels=6)


def test_lpb_tiles_pair_within_organ_fold_and_scale(tmp_path: Path, demo_tiles: Path) -> None:
    tiles = tmp_path / "tiles"
    shutil.copytree(demo_tiles, tiles)
    index = add_lpb(tiles, n_per_organ=3, levels=4, seed=1)
    originals = index[index["source"] == "original"].set_index("tile_id")
    lpb = index[index["source"] == "lpb"]
    assert len(lpb) == 3 * originals["organ"].nunique() and lpb["tile_id"].is_unique
    for _, row in lpb.iterrows():
        a, b = (originals.loc[t] for t in row["parents"].split("|"))
        assert a.name != b.name
        for parent in (a, b):
            assert (parent["organ"], parent["fold"], parent["split"]) == (row["organ"], row["fold"], row["split"])
        image, mask = read_tile(tiles, row)
        assert image.shape == (128, 128, 3) and mask.dtype == np.uint8
        mask_a, mask_b = read_tile(tiles, a)[1], read_tile(tiles, b)[1]
        assert np.all((mask == mask_a) | (mask == mask_b))  # every pixel comes from one parent's mask
        assert (mask > 0).mean() == pytest.approx(row["fg_fraction"], abs=1e-6)


def test_lpb_rerun_does_no_work_and_survives_tile_rerun(tmp_path: Path, demo_data: Path, demo_folds: Path) -> None:
    from data_prep.tiles import build_tiles

    tiles = tmp_path / "tiles"
    build_tiles(demo_data, demo_folds, tiles, size=64, splits=(2,))
    first = add_lpb(tiles, n_per_organ=2, levels=3, seed=0)
    written = {p: p.stat().st_mtime_ns for p in (tiles / "images").glob("lpb_*.png")}
    assert len(written) == 10
    second = add_lpb(tiles, n_per_organ=2, levels=3, seed=0)
    assert all(p.stat().st_mtime_ns == t for p, t in written.items())
    assert first.equals(second)
    assert build_tiles(demo_data, demo_folds, tiles, size=64, splits=(2,)).equals(second)  # LPB rows are kept
    with pytest.raises(TileSetError, match="--overwrite"):
        add_lpb(tiles, n_per_organ=2, levels=3, seed=5)
    third = add_lpb(tiles, n_per_organ=1, levels=3, seed=5, overwrite=True)
    assert (third["source"] == "lpb").sum() == 5
    assert len(list((tiles / "images").glob("lpb_*.png"))) == 5
    assert (load_index(tiles)["source"] == "lpb").sum() == 5


def test_preview_draws_one_row_per_organ(tmp_path: Path, demo_tiles: Path) -> None:
    from data_prep.preview import outlined, preview

    tiles = tmp_path / "tiles"
    shutil.copytree(demo_tiles, tiles)
    add_lpb(tiles, n_per_organ=1, levels=3, seed=0)
    path = preview(tiles, tmp_path / "preview.png", preset="seed10+stain", n_aug=2)
    picture = cv2.imread(str(path))
    n_organs, n_cols = load_index(tiles)["organ"].nunique(), 2 + 1 + 2 + 2  # whole, 2x2 part, LPB, H&E, PAS, 2 aug
    assert picture.shape[:2] == (round(240 * n_organs), round(220 * n_cols))
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 4
    drawn = outlined(np.zeros((32, 32, 3), np.uint8), mask)
    assert drawn[8, 8:24, 1].all() and not drawn[16, 16].any()  # the outline, not the filled region
