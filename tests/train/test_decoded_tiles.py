"""Decoded tile copies: the pixels of the PNG, re-decoded when the PNG changes, and a training run that never fails
because a copy cannot be written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from data_prep.tileset import read_png, write_png
from train.decoded_tiles import decoded_path, read_tile_image


def _tile(tmp_path: Path, seed: int = 0) -> tuple[Path, np.ndarray]:
    image = np.random.default_rng(seed).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    png = tmp_path / "tiles" / "images" / "a_s1_0.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    write_png(png, image)
    return png, image


def test_the_copy_holds_the_png_pixels_and_is_read_next_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    png, image = _tile(tmp_path)
    first = read_tile_image(png)
    copy = decoded_path(png)
    assert copy == tmp_path / "tiles" / "decoded" / "images" / "a_s1_0.npy"
    assert np.array_equal(first, image) and np.array_equal(first, read_png(png))
    assert first.dtype == np.uint8 and first.flags.c_contiguous
    assert copy.stat().st_mtime_ns == png.stat().st_mtime_ns
    assert not list(copy.parent.glob(".*"))  # no temporary file left
    monkeypatch.setattr("train.decoded_tiles.read_png", lambda *a, **k: pytest.fail("decoded the PNG again"))
    again = read_tile_image(png)
    assert np.array_equal(again, image) and again.flags.writeable


def test_a_rebuilt_tile_is_decoded_again(tmp_path: Path) -> None:
    png, _ = _tile(tmp_path)
    read_tile_image(png)
    stamp = png.stat().st_mtime_ns
    _, rebuilt = _tile(tmp_path, seed=1)
    os.utime(png, ns=(stamp + 10**9, stamp + 10**9))  # a rebuild within the clock's resolution still moves the stamp
    assert np.array_equal(read_tile_image(png), rebuilt)
    assert np.array_equal(np.load(decoded_path(png)), rebuilt)
    os.utime(png, ns=(stamp - 10**9, stamp - 10**9))  # an older PNG (a copy that kept its time) is not trusted either
    write_png(png, _tile(tmp_path, seed=2)[1])
    os.utime(png, ns=(stamp - 10**9, stamp - 10**9))
    assert np.array_equal(read_tile_image(png), read_png(png))


def test_a_copy_that_cannot_be_written_warns_and_returns_the_pixels(tmp_path: Path) -> None:
    png, image = _tile(tmp_path)
    (tmp_path / "tiles" / "decoded").write_text("not a folder")  # mkdir and the write fail, as on a full disk
    with pytest.warns(UserWarning, match="cannot write decoded tile copies"):
        assert np.array_equal(read_tile_image(png), image)


def test_an_unreadable_current_copy_fails_loudly(tmp_path: Path) -> None:
    png, _ = _tile(tmp_path)
    read_tile_image(png)
    copy = decoded_path(png)
    copy.write_bytes(b"truncated")
    os.utime(copy, ns=(png.stat().st_mtime_ns,) * 2)
    with pytest.raises(OSError, match="delete"):
        read_tile_image(png)
