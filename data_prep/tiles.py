"""Multi-scale tile sets (whole image, 2x2, 3x3 splits and reduce-R sliding tiles) with class-index masks.

    python -m data_prep.tiles --data-dir DATA --folds folds.csv --out TILES --size 768 [--splits 1,2,3]
        [--reduce 4 --reduce 6] [--overlap 0.25] [--target-pixel-size 0.4] [--tissue-threshold 0.05]
        [--scaled 0.8 ...] [--extra-data DATA2 ...] [--workers 2] [--overwrite]

Split tiles: each image is cut into n x n equal parts and every part is resized to size x size (area
interpolation for images, nearest for masks), so splits 1,2,3 give 14 tiles per image. Reduce tiles: the
image is downscaled by R (after rescaling to --target-pixel-size um/px when given), then cut into size x size
windows with the --overlap stride, reflection-padded where the image is smaller than a tile; windows with
less tissue than --tissue-threshold and no FTU pixel are dropped. --target-pixel-size only changes reduce
tiles: a split part is resized to size x size whatever the image scale, so its scale is recorded instead.
Scaled images (--scaled P, repeatable): the whole image and mask resampled to P um/px from the CSV pixel_size
(source "scaled", not cut, not size x size), which the trainers' crop sampler draws random crops from at the
physical scale the checkpoint predicts at.
Extra data (--extra-data DATA2, repeatable): another competition-layout train set (e.g. the pseudo-labels of
train.pseudo_label) tiled the same way into training-only rows: source "extra", fold -1 (in no validation fold,
so every fold trains on them), and an `ignore_rle` column, when present, marks mask pixels IGNORE_INDEX (255),
which the trainers' losses ignore. Its ids must differ from the main train set's. Extra folders can be added
to (or dropped from) an existing tile set without --overwrite: only their images are tiled (or left out).

Writes a tile set in the format of data_prep.tileset (the library its readers import): TILES/images/<tile_id>.png
(RGB), TILES/masks/<tile_id>.png (uint8: 0 background, 1..5 organ class) and TILES/index.csv (INDEX_COLUMNS;
boxes in original image pixels). This module is the CLI and the cutting. Each finished image leaves
TILES/parts/<image_id>.csv, so a re-run skips it; --overwrite clears the tile set (LPB tiles and stain copies
included) and redoes everything; a re-run without it keeps them. TILES/tiles.json records the build settings and the data folder (trainers read whole
validation images from it); re-running with other settings needs --overwrite or another --out.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from data_prep.tileset import (
    EXTRA_FOLD,
    IGNORE_INDEX,
    INDEX_COLUMNS,
    TileSetError,
    ftu_pixels,
    load_index,
    read_rows,
    scaled_tile_id,
    tile_paths,
    write_index,
    write_png,
    write_rows,
)
from inference.cli import HelpFormatter
from inference.io import ImageReadError, read_image
from inference.organs import class_index
from inference.rle import decode
from inference.tables import TableError, load_folds, load_train
from inference.tiling import Box, grid_boxes, resize_image, scaled_size, split_boxes, stride_for
from inference.tissue import tissue_cutoff, tissue_fraction

DEFAULT_TISSUE_THRESHOLD = 0.05
ADDED_SOURCES = ("lpb", "stain")  # written into an existing tile set by other tools; a rebuild keeps them


class ImageSizeError(ValueError):
    """An image's pixel size disagrees with img_height/img_width in train.csv."""


@dataclass(frozen=True)
class TileSettings:
    size: int
    splits: tuple[int, ...]
    reduces: tuple[int, ...]
    overlap: float
    target_pixel_size: float | None
    tissue_threshold: float
    scaled: tuple[float, ...] = ()  # um/px of the whole-image "scaled" rows
    extra_data: tuple[str, ...] = ()  # extra train sets (resolved folders), tiled into "extra" rows


@dataclass(frozen=True)
class ImageJob:
    image_id: int
    path: str
    organ: str
    data_source: str
    fold: int
    height: int
    width: int
    pixel_size: float
    rle: str
    ignore_rle: str = ""  # pixels marked IGNORE_INDEX (extra data)
    source: str = "original"  # "original", or "extra" for --extra-data images


def pad_to(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reflection-pad bottom/right up to (height, width); no-op when already large enough."""
    dh, dw = max(0, height - array.shape[0]), max(0, width - array.shape[1])
    if not dh and not dw:
        return array
    border = cv2.BORDER_REFLECT_101 if min(array.shape[:2]) > 1 else cv2.BORDER_REPLICATE
    return cv2.copyMakeBorder(array, 0, dh, 0, dw, border)


def reduce_factor(reduce: int, pixel_size: float, target_pixel_size: float | None) -> float:
    """Total downscale of a reduce-R tile: R, times target/native pixel size when rescaling first."""
    return reduce if target_pixel_size is None else reduce * target_pixel_size / pixel_size


def load_image(job: ImageJob) -> tuple[np.ndarray, np.ndarray]:
    """Read an image and its class-index mask, checking the size against train.csv."""
    image = read_image(job.path)
    if image.shape[:2] != (job.height, job.width):
        raise ImageSizeError(
            f"{job.path}: image is {image.shape[0]}x{image.shape[1]} (h x w) but train.csv says "
            f"img_height={job.height}, img_width={job.width} for id {job.image_id}; fix the CSV row or the file"
        )
    mask = decode(job.rle, job.height, job.width)
    mask *= np.uint8(class_index(job.organ))
    if job.ignore_rle:
        mask[(decode(job.ignore_rle, job.height, job.width) > 0) & (mask == 0)] = IGNORE_INDEX
    return image, mask


class Tile(NamedTuple):
    tile_id: str
    split: int
    reduce: int
    box: Box  # footprint in original image pixels
    image: np.ndarray
    mask: np.ndarray
    pixel_size: float  # um per tile pixel


def cut_tiles(image: np.ndarray, mask: np.ndarray, job: ImageJob, settings: TileSettings) -> Iterator[Tile]:
    """Yield the split tiles, then the reduce tiles, of one image (nothing dropped yet)."""
    size, h, w = settings.size, job.height, job.width
    for n in settings.splits:
        for k, (x0, y0, x1, y1) in enumerate(split_boxes(h, w, n)):
            yield Tile(
                f"{job.image_id}_s{n}_{k}",
                n,
                0,
                (x0, y0, x1, y1),
                resize_image(image[y0:y1, x0:x1], size, size),
                resize_image(mask[y0:y1, x0:x1], size, size, nearest=True),
                job.pixel_size * ((x1 - x0) + (y1 - y0)) / (2 * size),
            )
    stride = stride_for(size, settings.overlap)
    for reduce in settings.reduces:
        factor = reduce_factor(reduce, job.pixel_size, settings.target_pixel_size)
        rh, rw = max(1, round(h / factor)), max(1, round(w / factor))
        interp = cv2.INTER_AREA if factor >= 1 else cv2.INTER_LINEAR
        small = pad_to(cv2.resize(image, (rw, rh), interpolation=interp), size, size)
        small_mask = pad_to(cv2.resize(mask, (rw, rh), interpolation=cv2.INTER_NEAREST), size, size)
        sx, sy = w / rw, h / rh
        for k, (tx0, ty0, tx1, ty1) in enumerate(grid_boxes(rh, rw, size, stride)):
            yield Tile(
                f"{job.image_id}_r{reduce}_{k}",
                0,
                reduce,
                (round(tx0 * sx), round(ty0 * sy), round(tx1 * sx), round(ty1 * sy)),
                small[ty0:ty1, tx0:tx1],
                small_mask[ty0:ty1, tx0:tx1],
                job.pixel_size * factor,
            )
    for px in settings.scaled:
        sh, sw = scaled_size(h, w, job.pixel_size / px)
        yield Tile(
            scaled_tile_id(job.image_id, px),
            0,
            0,
            (0, 0, w, h),
            resize_image(image, sh, sw),
            resize_image(mask, sh, sw, nearest=True),
            px,
        )


def tile_image(job: ImageJob, settings: TileSettings, out: Path) -> pd.DataFrame:
    """Cut one image into tiles, write them and its part index (the image's done marker); return its rows."""
    image, mask = load_image(job)
    cutoff = tissue_cutoff(image)
    rows = []
    for tile in cut_tiles(image, mask, job, settings):
        fg = float(ftu_pixels(tile.mask).mean())
        tissue = tissue_fraction(tile.image, cutoff)
        scaled = tile.reduce == 0 and tile.split == 0
        if tile.split == 0 and not scaled and fg == 0.0 and tissue < settings.tissue_threshold:
            continue
        image_path, mask_path = tile_paths(tile.tile_id)
        write_png(out / image_path, np.ascontiguousarray(tile.image))
        write_png(out / mask_path, np.ascontiguousarray(tile.mask))
        x0, y0, x1, y1 = tile.box
        rows.append(
            {
                "tile_id": tile.tile_id,
                "image_id": job.image_id,
                "organ": job.organ,
                "data_source": job.data_source,
                "fold": job.fold,
                "split": tile.split,
                "reduce": tile.reduce,
                "x0": x0,
                "y0": y0,
                "x1": x1,
                "y1": y1,
                "fg_fraction": round(fg, 6),
                "image_path": image_path,
                "mask_path": mask_path,
                "source": job.source if job.source != "original" else "scaled" if scaled else "original",
                "img_height": job.height,
                "img_width": job.width,
                "tile_pixel_size": round(tile.pixel_size, 6),
                "tissue_fraction": round(tissue, 6),
                "parents": "",
            }
        )
    part = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    write_rows(out / "parts" / f"{job.image_id}.csv", part)  # written last: every tile of the image is on disk
    return part


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one image per process; OpenCV threads would only contend for the same cores


def _jobs(data_dir: Path, folds_csv: Path) -> list[ImageJob]:
    train = load_train(data_dir / "train.csv")
    fold_of = {int(i): f for i, f in load_folds(folds_csv).items()}
    missing = [int(i) for i in train["id"] if int(i) not in fold_of]
    if missing:
        raise TileSetError(
            f"{len(missing)} image(s) of {data_dir / 'train.csv'} have no fold in {folds_csv} (e.g. {missing[:5]}); "
            f"regenerate it: python -m data_prep.make_folds --train-csv {data_dir / 'train.csv'} --out {folds_csv}"
        )
    return [
        ImageJob(
            int(r.id),
            str(data_dir / "train_images" / f"{r.id}.tiff"),
            r.organ,
            r.data_source,
            fold_of[int(r.id)],
            int(r.img_height),
            int(r.img_width),
            float(r.pixel_size),
            r.rle,
        )
        for r in train.itertuples(index=False)
    ]


def _extra_jobs(extra_dirs: Sequence[Path], taken: set[int]) -> list[ImageJob]:
    """Jobs of the --extra-data train sets: fold EXTRA_FOLD, source "extra", ignore band from `ignore_rle`."""
    jobs = []
    for data_dir in extra_dirs:
        table = load_train(data_dir / "train.csv")
        ids = [int(i) for i in table["id"]]
        clash = sorted(taken & set(ids))
        if clash:
            raise TileSetError(
                f"{data_dir / 'train.csv'}: id(s) {clash[:5]} are already in the tile set's train set or another "
                "--extra-data folder (tile names would collide); give the extra images other ids"
            )
        taken |= set(ids)
        ignore = table["ignore_rle"] if "ignore_rle" in table else pd.Series("", index=table.index)
        for r, band in zip(table.itertuples(index=False), ignore, strict=True):
            jobs.append(
                ImageJob(
                    int(r.id),
                    str(data_dir / "train_images" / f"{r.id}.tiff"),
                    r.organ,
                    r.data_source,
                    EXTRA_FOLD,
                    int(r.img_height),
                    int(r.img_width),
                    float(r.pixel_size),
                    r.rle,
                    band if isinstance(band, str) else "",
                    "extra",
                )
            )
    return jobs


def _prepare_out(out: Path, settings: TileSettings, overwrite: bool, data_dir: Path) -> pd.DataFrame:
    """Create the folders, check the recorded settings; return LPB and stain-copy rows to keep (none on overwrite)."""
    record = out / "tiles.json"
    if overwrite:
        for sub in ("images", "masks", "parts"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in ("index.csv", "tiles.json", "lpb.json", "stain_copies.json"):
            (out / name).unlink(missing_ok=True)
    elif record.is_file():
        before = json.loads(record.read_text())
        before.pop("data_dir", None)
        before.setdefault("scaled", [])  # tile sets from before --scaled existed
        # Extra data may be added or dropped between runs: its images are tiled or left out of the index.
        before.pop("extra_data", None)
        now = json.loads(json.dumps(asdict(settings)))
        now.pop("extra_data")
        if before != now:
            raise TileSetError(
                f"{out} was built with {before}, not {now}; pass --overwrite to rebuild it or choose another --out"
            )
    for sub in ("images", "masks", "parts"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({**asdict(settings), "data_dir": str(data_dir.resolve())}, indent=2) + "\n")
    if (out / "index.csv").is_file():
        index = load_index(out)
        return index[index["source"].isin(ADDED_SOURCES)]
    return pd.DataFrame(columns=list(INDEX_COLUMNS))


def build_tiles(
    data_dir: Path,
    folds_csv: Path,
    out: Path,
    size: int,
    splits: Sequence[int] = (1, 2, 3),
    reduces: Sequence[int] = (),
    overlap: float = 0.0,
    target_pixel_size: float | None = None,
    tissue_threshold: float = DEFAULT_TISSUE_THRESHOLD,
    workers: int = 1,
    overwrite: bool = False,
    scaled: Sequence[float] = (),
    extra_data: Sequence[Path] = (),
) -> pd.DataFrame:
    """Tile every train image (skipping finished ones unless overwrite) and write TILES/index.csv; return it.

    extra_data: more competition-layout folders whose images become training-only "extra" rows (fold -1).
    """
    data_dir, folds_csv, out = Path(data_dir), Path(folds_csv), Path(out)
    extra_dirs = [Path(d).resolve() for d in extra_data]
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if not splits and not reduces and not scaled:
        raise ValueError("nothing to do: give at least one split, reduce factor or scaled pixel size")
    if any(not px > 0 for px in scaled):
        raise ValueError(f"scaled pixel sizes must be positive um/px, got {list(scaled)}")
    if any(n < 1 for n in splits) or any(r < 1 for r in reduces):
        raise ValueError(f"splits must be >= 1 and reduce factors >= 1, got splits={splits}, reduces={reduces}")
    stride_for(size, overlap)  # validates overlap before any work
    settings = TileSettings(
        size,
        tuple(int(n) for n in splits),
        tuple(int(r) for r in reduces),
        float(overlap),
        None if target_pixel_size is None else float(target_pixel_size),
        float(tissue_threshold),
        tuple(float(px) for px in scaled),
        tuple(str(d) for d in extra_dirs),
    )
    jobs = _jobs(data_dir, folds_csv)
    jobs += _extra_jobs(extra_dirs, {j.image_id for j in jobs})
    added_rows = _prepare_out(out, settings, overwrite, data_dir)
    todo = [j for j in jobs if not (out / "parts" / f"{j.image_id}.csv").is_file()]
    print(f"tiles: {len(jobs)} images, {len(jobs) - len(todo)} already done, {len(todo)} to tile into {out}")
    if todo and workers <= 1:
        for job in tqdm(todo, desc="tiles", unit="img"):
            tile_image(job, settings, out)
    elif todo:
        ctx = multiprocessing.get_context("spawn")  # no inherited threads or locks from the parent
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx, initializer=_init_worker) as pool:
            futures = [pool.submit(tile_image, job, settings, out) for job in todo]
            with tqdm(total=len(futures), desc="tiles", unit="img") as bar:
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    bar.update(len(done))
                    for future in done:
                        if future.exception() is not None:
                            pool.shutdown(cancel_futures=True)
                            raise future.exception()
    parts = [read_rows(out / "parts" / f"{j.image_id}.csv") for j in jobs]
    frames = [p for p in [*parts, added_rows] if len(p)]
    index = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(INDEX_COLUMNS))
    write_index(out, index)
    return load_index(out)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m data_prep.tiles", description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True, help="competition layout: train.csv, train_images/")
    ap.add_argument("--folds", type=Path, required=True, help="folds.csv (id, organ, fold)")
    ap.add_argument("--out", type=Path, required=True, help="tile set folder")
    ap.add_argument("--size", type=int, default=768, help="tile side in pixels")
    ap.add_argument("--splits", default="1,2,3", help="comma-separated n for n x n splits; '' for none")
    ap.add_argument("--reduce", type=int, action="append", default=[], help="reduce factor R (repeatable)")
    ap.add_argument("--overlap", type=float, default=0.0, help="overlap fraction of reduce tiles, in [0, 1)")
    ap.add_argument("--target-pixel-size", type=float, default=None, help="um/px to rescale to before reducing")
    ap.add_argument(
        "--scaled",
        type=float,
        action="append",
        default=[],
        help="also store each whole image resampled to this um/px (repeatable), for the crop sampler",
    )
    ap.add_argument(
        "--extra-data",
        type=Path,
        action="append",
        default=[],
        help="another train set (train.csv, train_images/, optional ignore_rle column), e.g. train.pseudo_label's "
        "output, tiled into training-only rows (repeatable)",
    )
    ap.add_argument(
        "--tissue-threshold",
        type=float,
        default=DEFAULT_TISSUE_THRESHOLD,
        help="drop reduce tiles with a smaller tissue fraction and no FTU (0 keeps all)",
    )
    ap.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    ap.add_argument("--overwrite", action="store_true", help="delete the tile set and redo every image")
    args = ap.parse_args(argv)
    try:
        index = build_tiles(
            args.data_dir,
            args.folds,
            args.out,
            args.size,
            _ints(args.splits),
            args.reduce,
            args.overlap,
            args.target_pixel_size,
            args.tissue_threshold,
            args.workers,
            args.overwrite,
            args.scaled,
            args.extra_data,
        )
    except (TileSetError, ImageSizeError, ImageReadError, TableError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    counts = index.groupby(["source", "split", "reduce"]).size().rename("tiles")
    print(
        f"wrote {args.out / 'index.csv'}: {len(index)} tiles of {index['image_id'].nunique()} images\n"
        f"{counts.to_string()}"
    )


if __name__ == "__main__":
    main()
