"""mmseg pipeline steps made faster give exactly what they gave before: LoadTileImage through a decoded copy the
PNG's pixels, FtuMask's lookup table the former np.where on every class value. benchmarks/data_pipeline.py measures
the speed (and the largest difference between whole samples of the two, 0)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mmcv", reason="mmcv is built from source by `make venv` (tools/build_mmcv_wheel.sh)")

from data_prep.tileset import read_png, write_png  # noqa: E402
from train.decoded_tiles import decoded_path  # noqa: E402
from train.mmseg_ext.transforms import FtuMask, LoadTileImage  # noqa: E402

pytestmark = pytest.mark.mmseg


@pytest.mark.parametrize("decoded_copies", [True, False])
def test_load_tile_image_reads_the_png_pixels(tmp_path: Path, decoded_copies: bool) -> None:
    image = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    png = tmp_path / "images" / "t.png"
    png.parent.mkdir()
    write_png(png, image)
    step = LoadTileImage(decoded_copies=decoded_copies)
    for _ in range(2):  # the first read writes the copy, the second reads it
        results = step.transform({"img_path": str(png)})
        assert np.array_equal(results["img"], read_png(png)) and np.array_equal(results["img"], image)
        assert results["img_shape"] == results["ori_shape"] == (40, 30)
    assert decoded_path(png).is_file() == decoded_copies


def test_ftu_mask_equals_the_former_formula_on_every_value() -> None:
    mask = np.arange(256, dtype=np.uint8).repeat(3).reshape(48, 16)
    former = np.where(mask == 255, 255, mask > 0).astype(mask.dtype)
    out = FtuMask().transform({"gt_seg_map": mask.copy()})["gt_seg_map"]
    assert out.dtype == np.uint8 and out.shape == mask.shape and np.array_equal(out, former)
    assert set(np.unique(out)) == {0, 1, 255}
    with pytest.raises(TypeError, match="uint8"):
        FtuMask().transform({"gt_seg_map": mask.astype(np.int64)})
