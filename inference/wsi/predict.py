"""Predict FTUs on a whole-slide image with the checkpoints and ensembles of inference.predict.

    python -m inference.wsi --slide SLIDE --models RUN [RUN ...] --out DIR [--mpp UM_PER_PX] [--organ ORGAN]
        [--ensemble mean|union] [--weights W ...] [--thresholds organs.json] [--threshold T] [--tta 0|2|4|8]
        [--tta-scales 0.8,1,1.2] [--organ-from csv|model] [--reader auto|tifffile|openslide] [--block 2048] [--device auto|cpu|cuda] [--overwrite]

How: the slide is opened through tifffile's zarr store (OME-TIFF, generic tiled TIFF) or OpenSlide (vendor
formats), the pyramid level nearest the models' um/px is chosen (slide um/px from the file, or --mpp), and a
thumbnail's Otsu tissue map (inference.tissue) decides what to predict. The level is cut into blocks of
--block pixels, each read with a margin of one model window on every side and run through
inference.engine.ensemble.predict_image (the same scale rule, sliding windows, blending, TTA, ensembling and
thresholds as inference.predict) with a WindowFilter, so windows over bare glass are not run; blocks without
tissue are not even read. Each block's centre goes into two zarr arrays on disk (mask and probability at the
level's resolution) and the block is recorded in DIR/S_work/state.json, so an interrupted run resumes at the
next block and memory stays one block whatever the slide size.

Writes, for slide stem S: DIR/S_mask.tif (0/255 tiled pyramidal OME-TIFF at level-0 size, SubIFD levels),
DIR/S_heatmap.png (probability thumbnail), DIR/S_overlay.png (thumbnail with FTU outlines), DIR/S.geojson
(QuPath-importable FeatureCollection of FTU polygons in level-0 pixels, holes as inner rings) and DIR/S_ftus.csv
(one row per FTU, area in um^2). A finished slide is skipped on re-run (--overwrite redoes it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from inference.engine.ensemble import EnsembleOptions, Member, add_ensemble_arguments, predict_image
from inference.wsi.polygons import iter_ftus, write_ftus
from inference.io import ImageReadError
from inference.organs import ORGANS
from inference.predict import load_members
from inference.wsi.reader import READERS, Slide, open_slide, thumbnail, write_pyramid
from inference.engine.sliding import WindowFilter
from inference.tiling import window_starts
from inference.tissue import tissue_mask

log = logging.getLogger("inference.wsi")
CHUNK = 512  # zarr chunk side; blocks are whole chunks so a block's write never touches a neighbour's chunk


@dataclass
class WsiOptions(EnsembleOptions):
    """EnsembleOptions plus what a whole-slide prediction adds (always at the models' um/px, no side cap)."""

    scale_mode: str = "pixel-size"
    max_side: int | None = None
    organ: str = ""  # for organ thresholds and --organ-from csv; "" = none (the majority class)
    block: int = 2048  # level pixels per block side (a multiple of CHUNK)
    thumbnail_side: int = 2048  # longer side of the tissue thumbnail, heatmap and overlay


def slide_stem(path: Path) -> str:
    """File name without .ome.tif(f) or its last suffix."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def model_pixel_size(members: list[Member]) -> float:
    """The finest um/px among the members' checkpoints (each is still resampled to its own in predict_image)."""
    sizes = [m.predictor.config.pixel_size for m in members]
    if any(s is None for s in sizes):
        names = [m.predictor.name for m, s in zip(members, sizes, strict=True) if s is None]
        raise ValueError(f"whole-slide prediction needs pixel_size (um/px) in config.json; missing in {names}")
    return float(min(sizes))


def _windows_in(members: list[Member], height: int, width: int, level_mpp: float) -> int:
    """Sliding windows all members would run on a (height, width) region at level_mpp."""
    total = 0
    for m in members:
        h, w = m.predictor.working_size(height, width, "pixel-size", level_mpp)
        tile, stride = m.predictor.config.tile_size, m.predictor.stride
        total += len(window_starts(max(h, tile), tile, stride)) * len(window_starts(max(w, tile), tile, stride))
    return total


def _fingerprint(slide: Slide, level: int, members: list[Member], options: WsiOptions) -> dict:
    models = [
        {"folder": m.predictor.name, "weight": m.weight,
         "mtime": os.path.getmtime(Path(m.predictor.name) / m.predictor.config.weights)}
        for m in members
    ]
    return {"slide": str(slide.path.resolve()), "dimensions": slide.dimensions[0], "mpp": slide.mpp,
            "level": level, "models": models, "options": asdict(options)}


class WorkState:
    """DIR/S_work/: state.json (settings, finished blocks, counts) and the zarr mask/probability arrays."""

    def __init__(self, folder: Path, fingerprint: dict, shape: tuple[int, int], overwrite: bool) -> None:
        import zarr

        self.folder = folder
        self.path = folder / "state.json"
        digest = hashlib.sha1(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
        if overwrite:
            shutil.rmtree(folder, ignore_errors=True)
        state = json.loads(self.path.read_text()) if self.path.is_file() else None
        if state is not None and state["digest"] != digest:
            raise ValueError(
                f"{folder} holds a run with other settings ({state['fingerprint']}); re-run with the same "
                "settings to resume, or pass --overwrite to start over"
            )
        folder.mkdir(parents=True, exist_ok=True)
        self.state = state or {"digest": digest, "fingerprint": fingerprint, "done": [], "finished": False,
                               "predicted_windows": 0, "skipped_windows": 0, "blocks_without_tissue": 0}
        kwargs = dict(shape=shape, chunks=(CHUNK, CHUNK), dtype="uint8", fill_value=0)
        if state is None:
            self.mask = zarr.create_array(store=str(folder / "mask.zarr"), overwrite=True, **kwargs)
            self.prob = zarr.create_array(store=str(folder / "prob.zarr"), overwrite=True, **kwargs)
            self.save()
        else:
            self.mask = zarr.open_array(str(folder / "mask.zarr"), mode="r+")
            self.prob = zarr.open_array(str(folder / "prob.zarr"), mode="r+")
        self.done = set(self.state["done"])

    def save(self) -> None:
        """Write state.json atomically."""
        self.state["done"] = sorted(getattr(self, "done", set()))
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1) + "\n")
        os.replace(tmp, self.path)


def _blocks(height: int, width: int, block: int) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) blocks covering a level, row by row."""
    return [(x, y, min(x + block, width), min(y + block, height))
            for y in range(0, height, block) for x in range(0, width, block)]


def predict_blocks(
    slide: Slide, level: int, members: list[Member], options: WsiOptions, work: WorkState,
    tissue: np.ndarray, thumb_factor: float,
) -> None:
    """Predict every unfinished block into the work arrays (see the module docstring)."""
    lw, lh = slide.dimensions[level]
    level_mpp = slide.level_mpp(level)
    ds = slide.downsamples[level]
    # one window on every side, plus half an MRN context view beyond it
    margin = max(math.ceil(m.predictor.config.tile_size * (m.predictor.config.context + 1) / 2
                           * m.predictor.config.pixel_size / level_mpp) for m in members)
    blocks = _blocks(lh, lw, options.block)
    todo = [(i, b) for i, b in enumerate(blocks) if i not in work.done]
    state = work.state
    for i, (x0, y0, x1, y1) in tqdm(todo, desc="wsi blocks", unit="block", total=len(todo)):
        rx0, ry0 = max(0, x0 - margin), max(0, y0 - margin)
        rx1, ry1 = min(lw, x1 + margin), min(lh, y1 + margin)
        # the region's footprint on the thumbnail tissue map (level px -> level-0 px -> thumbnail px)
        f = ds / thumb_factor
        tx0, ty0 = int(rx0 * f), int(ry0 * f)
        tx1, ty1 = max(tx0 + 1, math.ceil(rx1 * f)), max(ty0 + 1, math.ceil(ry1 * f))
        keep = tissue[ty0:ty1, tx0:tx1]
        if not keep.any():
            state["skipped_windows"] += _windows_in(members, ry1 - ry0, rx1 - rx0, level_mpp)
            state["blocks_without_tissue"] += 1
        else:
            image = slide.read(level, rx0, ry0, rx1 - rx0, ry1 - ry0)
            windows = WindowFilter(keep)
            decision = predict_image(image, members, options.organ, level_mpp, options, windows)
            core = (slice(y0 - ry0, y1 - ry0), slice(x0 - rx0, x1 - rx0))
            work.mask[y0:y1, x0:x1] = decision.mask[core].astype(np.uint8)
            work.prob[y0:y1, x0:x1] = np.round(decision.probability[core] * 255).astype(np.uint8)
            state["predicted_windows"] += windows.predicted
            state["skipped_windows"] += windows.skipped
        work.done.add(i)
        work.save()


def mask_strips(mask, level0: tuple[int, int], rows: int = 256) -> Iterator[np.ndarray]:
    """Level-0 row strips (0/255 uint8) of a level-resolution mask, nearest-sampled at pixel centres."""
    w0, h0 = level0
    lh, lw = mask.shape
    xs = np.minimum(((np.arange(w0) + 0.5) * lw / w0).astype(np.int64), lw - 1)
    for y in range(0, h0, rows):
        ys = np.minimum(((np.arange(y, min(y + rows, h0)) + 0.5) * lh / h0).astype(np.int64), lh - 1)
        band = np.asarray(mask[int(ys[0]) : int(ys[-1]) + 1, :])
        yield (band[ys - ys[0]][:, xs] > 0).astype(np.uint8) * np.uint8(255)


def shrink(array, size: tuple[int, int], block: int = 4096) -> np.ndarray:
    """Area-resize a large 2-D array (zarr or numpy) to size=(h, w), block by block."""
    th, tw = size
    h, w = array.shape
    out = np.zeros((th, tw), np.float32)
    for y in range(0, h, block):
        for x in range(0, w, block):
            ty0, tx0 = round(y * th / h), round(x * tw / w)
            ty1 = max(ty0 + 1, round(min(y + block, h) * th / h))
            tx1 = max(tx0 + 1, round(min(x + block, w) * tw / w))
            part = np.asarray(array[y : y + block, x : x + block], dtype=np.float32)
            out[ty0:ty1, tx0:tx1] = cv2.resize(part, (tx1 - tx0, ty1 - ty0), interpolation=cv2.INTER_AREA)
    return out


def write_pictures(thumb: np.ndarray, work: WorkState, heatmap: Path, overlay: Path) -> None:
    """Probability heatmap and a thumbnail with FTU outlines, both at the thumbnail's size."""
    size = thumb.shape[:2]
    prob = np.clip(shrink(work.prob, size), 0, 255).astype(np.uint8)
    colour = cv2.applyColorMap(prob, cv2.COLORMAP_INFERNO)
    if not cv2.imwrite(str(heatmap), colour):
        raise OSError(f"cannot write {heatmap}")
    ftu = (shrink(work.mask, size) >= 0.5).astype(np.uint8)
    picture = cv2.cvtColor(thumb, cv2.COLOR_RGB2BGR)
    tint = picture.copy()
    tint[ftu > 0] = (255, 255, 0)
    picture = cv2.addWeighted(picture, 0.75, tint, 0.25, 0)
    contours, _ = cv2.findContours(ftu, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(picture, contours, -1, (255, 255, 0), 1)
    if not cv2.imwrite(str(overlay), picture):
        raise OSError(f"cannot write {overlay}")


def predict_slide(
    slide_path: Path, members: list[Member], out: Path, options: WsiOptions, reader: str = "auto",
    mpp: float | None = None, overwrite: bool = False,
) -> dict:
    """Predict one slide into DIR/S_* outputs (resuming unfinished work); return the summary."""
    if options.block % CHUNK:
        raise ValueError(f"--block must be a multiple of {CHUNK}, got {options.block}")
    out.mkdir(parents=True, exist_ok=True)
    stem = slide_stem(slide_path)
    paths = {k: out / f"{stem}{suffix}" for k, suffix in
             (("mask", "_mask.tif"), ("heatmap", "_heatmap.png"), ("overlay", "_overlay.png"),
              ("geojson", ".geojson"), ("csv", "_ftus.csv"))}
    start = time.perf_counter()
    with open_slide(slide_path, reader, mpp) as slide:
        if slide.mpp is None:
            raise ValueError(f"{slide_path}: no pixel size in the file's metadata; pass --mpp (um per level-0 pixel)")
        target = model_pixel_size(members)
        level = slide.nearest_level(target)
        lw, lh = slide.dimensions[level]
        work = WorkState(out / f"{stem}_work", _fingerprint(slide, level, members, options), (lh, lw), overwrite)
        state = work.state
        if state["finished"] and all(p.is_file() for p in paths.values()):
            print(f"{slide_path} is already predicted into {out} (pass --overwrite to redo it)")
            return state["summary"]
        thumb, thumb_factor = thumbnail(slide, options.thumbnail_side)
        tissue = tissue_mask(thumb, slide.mpp * thumb_factor)
        log.info("%s: %dx%d px at %.4g um/px; level %d (%dx%d, %.4g um/px) for models at %.4g um/px",
                 slide_path.name, *slide.dimensions[0], slide.mpp, level, lw, lh, slide.level_mpp(level), target)
        predict_blocks(slide, level, members, options, work, tissue, thumb_factor)
        level0 = slide.dimensions[0]
        scale = (level0[0] / lw, level0[1] / lh)
        organ_name = options.organ or "FTU"
        totals = write_ftus(iter_ftus(work.mask, scale, work.prob), paths["geojson"], paths["csv"], slide.mpp,
                            organ_name)
        write_pyramid(paths["mask"], mask_strips(work.mask, level0), level0[1], level0[0], mpp=slide.mpp,
                      layout="subifds", mask=True)
        write_pictures(thumb, work, paths["heatmap"], paths["overlay"])
        summary = {
            "slide": str(slide_path), "level": level, "level_mpp": slide.level_mpp(level), "model_mpp": target,
            "blocks": len(_blocks(lh, lw, options.block)), "blocks_without_tissue": state["blocks_without_tissue"],
            "predicted_windows": state["predicted_windows"], "skipped_windows": state["skipped_windows"],
            "ftus": totals["ftus"], "ftu_area_um2": round(totals["area_px"] * slide.mpp**2, 1),
            "seconds": round(time.perf_counter() - start, 1), "outputs": {k: str(p) for k, p in paths.items()},
        }
        state.update(finished=True, summary=summary)
        work.save()
    return summary


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m inference.wsi", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slide", type=Path, required=True, help="whole-slide image (OME-TIFF, tiled TIFF, .svs, ...)")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--mpp", type=float, help="um per level-0 pixel (default: from the file's metadata)")
    ap.add_argument("--organ", choices=ORGANS, help="the slide's organ: picks --thresholds entries, --organ-from csv")
    ap.add_argument("--reader", choices=READERS, default="auto", help="auto: tifffile for TIFFs, else OpenSlide")
    add_ensemble_arguments(ap, scale=False)
    ap.add_argument("--block", type=int, default=2048, help=f"block side in level pixels (multiple of {CHUNK})")
    ap.add_argument("--overwrite", action="store_true", help="discard finished or partial work for this slide")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        options = WsiOptions.from_args(args, organ=args.organ or "")
        members = load_members(args.models, args.weights, args.device, args.batch_size, args.blend)
        summary = predict_slide(args.slide, members, args.out, options, args.reader, args.mpp, args.overwrite)
    except (ImageReadError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{summary['slide']}: level {summary['level']} at {summary['level_mpp']:.4g} um/px for models at "
        f"{summary['model_mpp']:.4g}; {summary['predicted_windows']} windows predicted, {summary['skipped_windows']} "
        f"background windows skipped ({summary['blocks_without_tissue']} of {summary['blocks']} blocks without "
        f"tissue); {summary['ftus']} FTUs, {summary['ftu_area_um2']:.0f} um^2; {summary['seconds']:.1f} s -> "
        f"{Path(summary['outputs']['mask']).parent}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
