"""Offline stain copies: the target's stains, the source's masks and folds, training-only rows, resumable runs."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep.stain_copies import (
    METHODS,
    add_stain_copies,
    image_paths,
    main,
    nonnegative_concentrations,
    read_any,
    target_order,
    vahadane_stains,
)
from data_prep.tiles import build_tiles
from data_prep.tileset import TileSetError, load_index, read_png
from train.configs.fastai.base import FastaiConfig
from train.fastai_data import load_scaled_images, split_rows
from train.mmseg_ext.dataset import fold_rows


@pytest.fixture
def tiles(demo_tiles: Path, tmp_path: Path) -> Path:
    """A private copy of the session tile set (copies are written into it)."""
    return Path(shutil.copytree(demo_tiles, tmp_path / "tiles"))


def _stain_direction(image: np.ndarray) -> np.ndarray:
    """Mean unit optical-density colour of an image's stained pixels (its stain mix, whatever its intensity)."""
    od = -np.log((image.reshape(-1, 3).astype(np.float64) + 1) / 256)
    od = od[od.sum(1) > 0.3]
    return (od / np.linalg.norm(od, axis=1, keepdims=True)).mean(0)


@pytest.mark.parametrize("method", METHODS)
def test_copies_carry_the_target_stain_and_the_source_mask_and_fold(
    tiles: Path, demo_data: Path, method: str
) -> None:
    index = add_stain_copies(tiles, [demo_data / "targets"], method=method, copies=2)
    sources = index[index["source"] == "scaled"].set_index("tile_id")
    copies = index[index["source"] == "stain"]
    assert len(copies) >= len(sources)  # a few images may be unfit for a method, never most
    targets = [read_any(p) for p in image_paths([demo_data / "targets"])]
    closer = []
    for row in copies.itertuples():
        parent = sources.loc[row.parents]
        assert row.mask_path == parent["mask_path"] and row.fold == parent["fold"]  # same geometry, same fold
        assert row.image_id == parent["image_id"] and row.tile_pixel_size == parent["tile_pixel_size"]
        copy, source = read_png(tiles / row.image_path), read_png(tiles / parent["image_path"])
        assert copy.shape == source.shape
        k = int(row.tile_id.rsplit("_stain", 1)[1])
        target = targets[target_order(row.image_id, len(targets), 0)[k % len(targets)]]
        goal = _stain_direction(target)
        closer.append(np.linalg.norm(_stain_direction(copy) - goal) < np.linalg.norm(_stain_direction(source) - goal))
    assert np.mean(closer) >= 0.8, f"{method}: only {np.mean(closer):.0%} of copies moved towards their target"


def test_copies_train_their_own_fold_only_and_never_validate(
    tiles: Path, demo_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = FastaiConfig(encoder_weights=None, tile_size=64, pixel_size=0.8, stain_copy_share=0.5)
    before = load_index(tiles)
    with caplog.at_level(logging.WARNING, logger="train.fastai_data"):
        split_rows(before[before["source"] != "stain"], 0, cfg)  # a share but no copies: said, not silent
    assert "data_prep.stain_copies" in caplog.text
    index = add_stain_copies(tiles, [demo_data / "targets"], method="reinhard", copies=2)
    copies = index[index["source"] == "stain"]
    for fold in [*sorted(index["fold"].unique()), -1]:
        train, valid = split_rows(index, int(fold), cfg)
        assert not valid["source"].eq("stain").any()
        assert set(train.loc[train["source"] == "stain", "tile_id"]) == set(
            copies.loc[(copies["fold"] != fold) | (fold == -1), "tile_id"]
        )
        if fold != -1:
            assert not fold_rows(index, int(fold), "val")["source"].eq("stain").any()
        assert not fold_rows(index, int(fold), "train")["source"].eq("stain").any()  # whole images: not tiles
    train, _ = split_rows(index, 0, FastaiConfig(encoder_weights=None, tile_size=64, pixel_size=0.8))
    assert not train["source"].eq("stain").any()  # share 0 (the default): copies are not even loaded
    train, _ = split_rows(index, 0, cfg)
    images = load_scaled_images(train, tiles)
    assert len(images) == train["source"].eq("scaled").sum()
    assert sum(len(i.copies) for i in images) == train["source"].eq("stain").sum()
    assert all(c.shape == i.image.shape for i in images for c in i.copies)


def test_rerun_skips_copies_other_settings_need_overwrite_and_tiles_keep_them(
    tiles: Path, demo_data: Path, demo_folds: Path
) -> None:
    first = add_stain_copies(tiles, [demo_data / "targets"], method="macenko", copies=1)
    paths = [tiles / p for p in first.loc[first["source"] == "stain", "image_path"]]
    stamps = [p.stat().st_mtime_ns for p in paths]
    again = add_stain_copies(tiles, [demo_data / "targets"], method="macenko", copies=1)
    pd.testing.assert_frame_equal(first, again)
    assert [p.stat().st_mtime_ns for p in paths] == stamps
    with pytest.raises(TileSetError, match="--overwrite"):
        add_stain_copies(tiles, [demo_data / "targets"], method="reinhard", copies=1)
    rebuilt = build_tiles(demo_data, demo_folds, tiles, size=128, splits=(1, 2), workers=1, scaled=(0.8,))
    pd.testing.assert_frame_equal(rebuilt, first)  # re-running the tiler keeps the copies
    replaced = add_stain_copies(tiles, [demo_data / "targets"], method="reinhard", copies=2, overwrite=True)
    assert replaced["source"].eq("stain").sum() == 2 * replaced["source"].eq("scaled").sum()


def test_vahadane_recovers_known_stain_vectors() -> None:
    # Two known stains (Ruifrok & Johnston hematoxylin and eosin), mixed with sparse non-negative amounts.
    stains = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
    stains /= np.linalg.norm(stains, axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    amounts = rng.gamma(1.0, 0.6, (200 * 200, 2)) * (rng.random((200 * 200, 2)) < 0.7)
    image = np.clip(255 * np.exp(-(amounts @ stains)), 0, 255).astype(np.uint8).reshape(200, 200, 3)
    found = vahadane_stains(image)
    assert np.abs(found.stain_matrix.T - stains).max() < 0.08
    od = amounts[:50] @ stains
    assert np.allclose(nonnegative_concentrations(od.astype(np.float32), stains.T), amounts[:50], atol=1e-3)


def test_cli_errors_exit_2(tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--tiles", str(tiles), "--targets", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err
    empty = tmp_path / "empty_tiles"
    build_tiles_dir = empty / "index.csv"
    empty.mkdir()
    load = load_index(tiles)
    load[load["source"] != "scaled"].to_csv(build_tiles_dir, index=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["--tiles", str(empty), "--targets", str(tiles / "images")])
    assert exit_info.value.code == 2 and "--scaled" in capsys.readouterr().err
