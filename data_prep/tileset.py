"""The tile-set format: TILES/index.csv and its columns, tile PNGs, whole-image rows and the build record.

A tile set (built by python -m data_prep.tiles; extended by data_prep.lpb, data_prep.stain_copies and
data_prep.wsi_tiles; read by both trainers) is a folder:
    index.csv         one row per tile (INDEX_COLUMNS; boxes x0, y0, x1, y1 in original image pixels)
    images/<id>.png   RGB uint8
    masks/<id>.png    uint8 class index: 0 background, 1..5 organ class (inference.organs), IGNORE_INDEX no loss
    tiles.json        the build settings and the competition folder it was built from
Sources (column `source`): "original" tiles and "scaled" whole images validate and train; "lpb" blends, "stain"
copies and "extra" data only train. Copies and blends keep their source image's fold (a fold-k copy never trains
fold k); extra rows have EXTRA_FOLD, so every fold trains on them.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from inference.atomic import atomic_write, write_bytes

# The contract's columns (see README), then ours: tissue fraction and, for LPB tiles, "tileA|tileB".
INDEX_COLUMNS: tuple[str, ...] = tuple(
    "tile_id,image_id,organ,data_source,fold,split,reduce,x0,y0,x1,y1,fg_fraction,image_path,mask_path,source,"
    "img_height,img_width,tile_pixel_size,tissue_fraction,parents".split(",")
)
# Mask value of pixels no loss may count (pseudo-labels between the two thresholds); mmseg's decode heads
# ignore 255 by default (ignore_index=255), the fastai losses take it as ignore_index.
IGNORE_INDEX = 255
EXTRA_FOLD = -1  # fold of --extra-data rows: in no validation fold, so every fold trains on them
# PNG encoding is most of the tiling time. For tissue tiles, the SUB filter with Huffman-only deflate encodes
# about 2x faster than level 1 defaults and 3x faster than level 6, at a smaller size than level 1; masks are
# long runs of one value, which the RLE strategy suits.
_PNG_IMAGE = [
    cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB,
    cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
]  # fmt: skip
_PNG_MASK = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]


class TileSetError(ValueError):
    """A tile folder or its inputs are inconsistent (missing folds, other build settings)."""


def tile_paths(tile_id: str) -> tuple[str, str]:
    """(image_path, mask_path) of a tile, relative to the tile set folder, as index.csv records them."""
    return f"images/{tile_id}.png", f"masks/{tile_id}.png"


def scaled_tile_id(image_id: int, pixel_size: float) -> str:
    """Tile id of an image's whole-image row at pixel_size um/px, e.g. 1234_px0.8."""
    return f"{image_id}_px{pixel_size:g}"


def write_png(path: Path, array: np.ndarray) -> None:
    """Write an RGB uint8 image or a 2-D uint8 mask as a fast-compressed PNG, atomically (never half a tile)."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", array, _PNG_IMAGE if array.ndim == 3 else _PNG_MASK)
    if not ok:
        raise OSError(f"cannot encode {path} as PNG")
    write_bytes(path, encoded.tobytes())


def read_png(path: Path, mask: bool = False) -> np.ndarray:
    """Read a tile PNG as (h, w, 3) RGB uint8, or as a 2-D uint8 class mask when mask=True."""
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED if mask else cv2.IMREAD_COLOR)
    if array is None:
        raise OSError(f"cannot read tile {path}")
    return array if mask else cv2.cvtColor(array, cv2.COLOR_BGR2RGB)


def read_tile(tiles_dir: Path, row: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Read one index row's image (RGB uint8) and class-index mask (uint8)."""
    return read_png(Path(tiles_dir) / row["image_path"]), read_png(Path(tiles_dir) / row["mask_path"], mask=True)


def read_rows(path: Path) -> pd.DataFrame:
    """Read an index-format CSV (index.csv or a per-image part) with tile ids and parents as strings."""
    return pd.read_csv(path, keep_default_na=False, dtype={"parents": str, "tile_id": str})


def load_index(tiles_dir: Path) -> pd.DataFrame:
    """Read TILES/index.csv, checking its columns."""
    path = Path(tiles_dir) / "index.csv"
    if not path.is_file():
        raise TileSetError(f"{path} not found; build the tile set with python -m data_prep.tiles")
    df = read_rows(path)
    missing = [c for c in INDEX_COLUMNS if c not in df.columns]
    if missing:
        raise TileSetError(f"{path}: missing column(s) {missing}; rebuild it with python -m data_prep.tiles")
    return df


def write_rows(path: Path, df: pd.DataFrame) -> None:
    """Write index-format rows (INDEX_COLUMNS, in that order) atomically: a crash never leaves half a file."""
    with atomic_write(path) as handle:
        df.loc[:, list(INDEX_COLUMNS)].to_csv(handle, index=False, lineterminator="\n")


def write_index(tiles_dir: Path, df: pd.DataFrame) -> None:
    """Write TILES/index.csv atomically."""
    write_rows(Path(tiles_dir) / "index.csv", df)


def whole_image_rows(index: pd.DataFrame) -> pd.Series:
    """True for the rows holding a whole image at a pixel size (split 0, reduce 0): "scaled" rows and their
    stain copies or extra-data counterparts, which the crop sampler draws from and tile trainers leave out."""
    return (index["split"] == 0) & (index["reduce"] == 0)


def ftu_pixels(mask: np.ndarray) -> np.ndarray:
    """Boolean FTU map of a class-index mask: any class, but not IGNORE_INDEX."""
    return (mask > 0) & (mask != IGNORE_INDEX)


def source_data_dir(tiles_dir: Path) -> Path | None:
    """The competition data folder a tile set was built from (recorded in tiles.json), if recorded."""
    record = Path(tiles_dir) / "tiles.json"
    if not record.is_file():
        return None
    data_dir = json.loads(record.read_text()).get("data_dir")
    return None if data_dir is None else Path(data_dir)
