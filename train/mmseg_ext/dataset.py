"""mmseg dataset over our tile index: RGB tiles with class-index masks, filtered to one fold's train or validation rows.

Mask pixels of data_prep.tileset.IGNORE_INDEX (255: the ignore band of pseudo-labelled extra data) are left out
of the loss by the decode heads' ignore_index, which is 255 unless a config changes it (check_ignore_index).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from data_prep.tileset import IGNORE_INDEX, load_index, whole_image_rows
from inference.organs import CLASSES

SUBSETS = ("train", "val")
# background black, then one colour per organ (only used by mmseg's visualiser)
PALETTE = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48]]


def fold_rows(index: pd.DataFrame, fold: int, subset: str) -> pd.DataFrame:
    """Rows of one fold's subset: train = fold != k (tiles, LPB blends and extra data, whose fold -1 is never k),
    val = fold == k and source original.

    fold -1 trains on every fold. Whole images at a pixel size (source "scaled", their stain copies and extra
    counterparts, for the fastai crop sampler) are not tiles of the tile size, so they are left out.
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset {subset!r} not in {SUBSETS}")
    index = index[~whole_image_rows(index)]
    if subset == "train":
        rows = index if fold == -1 else index[index["fold"] != fold]
    elif fold == -1:
        raise ValueError("fold -1 trains on every fold, so it has no validation rows")
    else:
        rows = index[(index["fold"] == fold) & (index["source"] == "original")]
    if rows.empty:
        folds = sorted(index["fold"].unique().tolist())
        raise ValueError(f"fold {fold} has no {subset} tiles; the tile index holds folds {folds}")
    return rows.reset_index(drop=True)


def check_ignore_index(model_cfg: dict) -> None:
    """Fail when a decode head's ignore_index is not IGNORE_INDEX: the pseudo-label band would be learnt as a class."""
    for head in ("decode_head", "auxiliary_head"):
        head_cfg = model_cfg.get(head)
        for one in head_cfg if isinstance(head_cfg, list) else [head_cfg]:
            if one is not None and one.get("ignore_index", IGNORE_INDEX) != IGNORE_INDEX:
                raise ValueError(
                    f"model.{head}.ignore_index is {one['ignore_index']}; the tile masks mark pixels to ignore with "
                    f"{IGNORE_INDEX}"
                )


@DATASETS.register_module()
class HubmapTileDataset(BaseSegDataset):
    """Tiles of TILES/index.csv for one fold; `rows` keeps the selected index rows for full-image validation."""

    METAINFO = dict(classes=CLASSES, palette=PALETTE)

    def __init__(self, tiles_dir: str, fold: int, subset: str, **kwargs) -> None:
        if tiles_dir is None or fold is None:
            raise ValueError("HubmapTileDataset needs tiles_dir and fold: run through `python -m train.mmseg_train`")
        self.tiles_dir = Path(tiles_dir)
        self.fold = int(fold)
        self.subset = subset
        self.rows = fold_rows(load_index(self.tiles_dir), self.fold, subset)
        super().__init__(data_root=str(self.tiles_dir), reduce_zero_label=False, **kwargs)

    def load_data_list(self) -> list[dict]:
        """One mmseg sample per selected tile, with absolute image and mask paths."""
        return [
            dict(
                img_path=str(self.tiles_dir / row.image_path),
                seg_map_path=str(self.tiles_dir / row.mask_path),
                label_map=self.label_map,
                reduce_zero_label=False,
                seg_fields=[],
                tile_id=row.tile_id,
                image_id=str(row.image_id),
            )
            for row in self.rows.itertuples(index=False)
        ]
