"""Predict FTUs on whole-slide images with the checkpoints and ensembles of inference.predict.

    python -m inference.wsi --slide SLIDE --models RUN [RUN ...] --out DIR [--mpp UM_PER_PX] [--organ ORGAN]
        [--ensemble mean|union] [--weights W ...] [--thresholds organs.json] [--threshold T] [--tta 0|2|4|8]
        [--tta-scales 0.8,1,1.2] [--organ-from csv|model] [--fill-holes] [--min-area UM2|organs.json] [--objects annotation|detection]
        [--mask-format tiff|ome] [--reader auto|tifffile|openslide] [--block 2048] [--device auto|cpu|cuda]
        [--overwrite]
    python -m inference.wsi --slides slides.csv --models RUN ... --out DIR [--engine local|ray]
        [--ray-address ADDR] [--max-retries 3] [same prediction flags]

How: the slide is opened with OpenSlide (vendor formats and vendor TIFFs) or tifffile (OME / generic TIFF;
compressed strip TIFFs are converted once to a tiled pyramid in DIR/S_work), its um/px checked (file
metadata, else --mpp, else objective power with a warning; outside [0.05, 50] is refused), and the coarsest
pyramid level at most 1.1 x the models' um/px is read (then downsampled to it). A thumbnail's Otsu tissue map
(inference.tissue) decides what to predict. The work grid (the level itself, or, for a level at least 1.5 x
finer than the models such as a slide without a pyramid, the level shrunk by an integer factor to about the
models' um/px: work_factor) is cut into blocks of --block work-grid pixels, each read with a margin of one model
window on every side (a shrunk level in row bands, area-shrunk band by band) and run through
inference.engine.ensemble.predict_image (the same scale rule, sliding windows, blending, TTA, ensembling and
thresholds as inference.predict) with a WindowFilter, so windows over bare glass are not run; blocks without
tissue are not even read, and the next tissue block is read in a thread while one is predicted. Each block's
centre goes into two zarr arrays on disk (mask and probability on the work grid) and the block is
recorded in DIR/S_work/state.json, so an interrupted run resumes at the next block and memory stays one
block whatever the slide size. --fill-holes / --min-area then clean every FTU with
inference.engine.postprocess (one connected component at a time, so memory stays bounded).

Writes, for slide stem S (see docs/wsi.md for opening them in QuPath, OpenSlide and MONAI):
- DIR/S_mask.tif: 0/255 tiled pyramidal TIFF at level-0 size in the layout OpenSlide reads (top-level pages,
  reduced levels SUBFILETYPE=1, resolution in pixels per cm); --mask-format ome writes DIR/S_mask.ome.tif
  (SubIFD levels, OME PhysicalSizeX) for Bio-Formats instead;
- DIR/S_prob.tif: the FTU probability (uint8, 255 = 1.0), same layout, size and mpp;
- DIR/S.geojson: QuPath-importable FeatureCollection, one valid (Multi)Polygon per FTU in level-0 pixels,
  QuPath classification per organ (glomerulus, gland, crypt, white pulp, alveolus), objectType --objects;
- DIR/S_ftus.csv: one row per FTU (slide, class, centroid, whole-pixel box, mpp, area in px and um^2);
- DIR/S_summary.json: slide, mpp, level read, work grid, models, thresholds, windows run and skipped, FTUs and
  area per class, seconds (in all and per stage: tissue, read (time waited for pixels), predict, postprocess,
  ftus, mask / prob pyramids (these three are written side by side, so their seconds overlap), pictures);
  DIR/S_heatmap.png and DIR/S_overlay.png: thumbnail previews.
A finished slide is skipped on re-run (--overwrite redoes it). --slides runs a cohort (inference.wsi.cohort);
the command line is inference.wsi.cli.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from inference.atomic import write_bytes, write_json
from inference.engine.ensemble import EnsembleOptions, Member, predict_image
from inference.engine.postprocess import postprocess
from inference.engine.sliding import WindowFilter
from inference.fingerprint import file_identity, model_identity
from inference.organs import CLASSES
from inference.tiling import window_starts
from inference.tissue import tissue_mask
from inference.wsi.polygons import OBJECT_TYPES, ftu_class, iter_components, iter_ftus, write_ftus
from inference.wsi.reader import Slide, open_slide, thumbnail, write_pyramid

log = logging.getLogger("inference.wsi")
CHUNK = 512  # zarr chunk side; blocks are whole chunks so a block's write never touches a neighbour's chunk
MASK_FORMATS = ("tiff", "ome")
IN_MEMORY_PIXELS = 64 * 2**20  # work grids up to this many pixels (64 MiB as uint8) are post-processed in memory



@dataclass
class WsiOptions(EnsembleOptions):
    """EnsembleOptions plus what a whole-slide prediction adds (always at the models' um/px, no side cap)."""

    scale_mode: str = "pixel-size"
    max_side: int | None = None
    organ: str = ""  # for organ thresholds and --organ-from csv; "" = none (the majority class)
    block: int = 2048  # level pixels per block side (a multiple of CHUNK)
    thumbnail_side: int = 2048  # longer side of the tissue thumbnail, heatmap and overlay
    fill_holes: bool = False
    min_area_um2: dict[str, float] = field(default_factory=dict)  # inference.engine.postprocess.load_min_area
    objects: str = "annotation"  # QuPath objectType of the GeoJSON features
    mask_format: str = "tiff"  # tiff: OpenSlide's layout (S_mask.tif); ome: SubIFD OME-TIFF (S_mask.ome.tif)


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


def run_digest(slide: Path, models: list[str | Path], weights: list[float] | None, blend: str,
               options: WsiOptions, reader: str, mpp: float | None) -> str:
    """A digest of a slide run's inputs as given: the slide file (path, size, mtime), every checkpoint folder of
    each --models entry (model_identity), --weights, --blend, the options, --reader and --mpp.

    is_finished compares it, so a slide finished with other models, settings or an edited file is not skipped.
    """
    from inference.engine.models import resolve_checkpoints

    entries = []
    for i, run in enumerate(models):
        try:
            folders = [model_identity(f) for f in resolve_checkpoints(run)]
        except FileNotFoundError:
            folders = []
        entries.append({"run": str(Path(run).resolve()), "weight": None if weights is None else weights[i],
                        "folders": folders})
    blob = {"slide": str(Path(slide).resolve()), "file": file_identity(Path(slide)), "models": entries,
            "blend": blend, "options": asdict(options), "reader": reader, "mpp": mpp}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def _fingerprint(slide: Slide, source: Path, level: int, members: list[Member], options: WsiOptions) -> dict:
    """What the work store's blocks depend on: the slide file (size, mtime), its level, the models (config.json
    contents, weights file, ensemble weight, blending window) and the options."""
    models = [
        {**model_identity(m.predictor.name), "weight": m.weight,
         "blend": hashlib.sha1(m.predictor.weights.detach().cpu().numpy().tobytes()).hexdigest()}
        for m in members
    ]
    return {"slide": str(Path(source).resolve()), "file": file_identity(Path(source)),
            "dimensions": slide.dimensions[0], "mpp": slide.mpp, "level": level, "models": models,
            "options": asdict(options)}


class WorkState:
    """DIR/S_work/: state.json (settings, finished blocks, counts) and the zarr mask/probability arrays."""

    def __init__(self, folder: Path, fingerprint: dict, shape: tuple[int, int], overwrite: bool,
                 run: str | None = None) -> None:
        import zarr

        self.folder = folder
        self.path = folder / "state.json"
        digest = hashlib.sha1(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
        if overwrite:
            shutil.rmtree(folder, ignore_errors=True)
        state = json.loads(self.path.read_text()) if self.path.is_file() else None
        if state is not None and state["digest"] != digest:
            raise ValueError(
                f"{folder} holds a run with other models, settings or slide file ({state['fingerprint']}); re-run "
                "with the same ones to resume, or pass --overwrite to start over"
            )
        folder.mkdir(parents=True, exist_ok=True)
        self.state = state or {"digest": digest, "fingerprint": fingerprint, "done": [], "finished": False,
                               "predicted_windows": 0, "skipped_windows": 0, "blocks_without_tissue": 0,
                               "classes": {}, "thresholds": []}
        # who works on the slide now (a cohort's worker; what an operator kills or looks for in its logs)
        self.state["owner"] = {"host": socket.gethostname(), "pid": os.getpid()}
        if run is not None:
            self.state["run"] = run  # run_digest of the command: is_finished compares it
        self.done = set(self.state["done"])
        kwargs = dict(shape=shape, chunks=(CHUNK, CHUNK), dtype="uint8", fill_value=0)
        if state is None:
            self.mask = zarr.create_array(store=str(folder / "mask.zarr"), overwrite=True, **kwargs)
            self.prob = zarr.create_array(store=str(folder / "prob.zarr"), overwrite=True, **kwargs)
            self.save()
        else:
            self.mask = zarr.open_array(str(folder / "mask.zarr"), mode="r+")
            self.prob = zarr.open_array(str(folder / "prob.zarr"), mode="r+")
            self.save()

    def save(self) -> None:
        """Write state.json atomically."""
        self.state["done"] = sorted(self.done)
        write_json(self.path, self.state, indent=1)


def _blocks(height: int, width: int, block: int) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) blocks covering a level, row by row."""
    return [(x, y, min(x + block, width), min(y + block, height))
            for y in range(0, height, block) for x in range(0, width, block)]


@dataclass
class BlockRegion:
    """One block of the level: its core, the region read around it, and the tissue map over that region."""

    index: int
    core: tuple[int, int, int, int]  # (x0, y0, x1, y1) level pixels written from this block
    region: tuple[int, int, int, int]  # (x0, y0, x1, y1) level pixels read and predicted
    keep: np.ndarray  # thumbnail tissue map over the region (no True: nothing to predict)


def block_regions(
    grid: WorkGrid, members: list[Member], block: int, tissue: np.ndarray, thumb_factor: float,
) -> list[BlockRegion]:
    """Every block of the work grid with its read region (one model window of margin, plus half an MRN context view).

    Blocks, cores and regions are in work-grid pixels; a region covers level pixels [x0 * k, x1 * k).
    """
    gh, gw = grid.shape
    work_mpp, ds = grid.mpp, grid.downsample
    margin = max(math.ceil(m.predictor.config.tile_size * (m.predictor.config.context + 1) / 2
                           * m.predictor.config.pixel_size / work_mpp) for m in members)
    out = []
    for i, (x0, y0, x1, y1) in enumerate(_blocks(gh, gw, block)):
        rx0, ry0 = max(0, x0 - margin), max(0, y0 - margin)
        rx1, ry1 = min(gw, x1 + margin), min(gh, y1 + margin)
        # the region's footprint on the thumbnail tissue map (work px -> level-0 px -> thumbnail px)
        f = ds / thumb_factor
        tx0, ty0 = int(rx0 * f), int(ry0 * f)
        tx1, ty1 = max(tx0 + 1, math.ceil(rx1 * f)), max(ty0 + 1, math.ceil(ry1 * f))
        out.append(BlockRegion(i, (x0, y0, x1, y1), (rx0, ry0, rx1, ry1), tissue[ty0:ty1, tx0:tx1]))
    return out


@contextmanager
def timed(state: dict, stage: str) -> Iterator[None]:
    """Add the seconds of the `with` body to state["stage_seconds"][stage] (summed over resumed runs)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        stages = state.setdefault("stage_seconds", {})
        stages[stage] = stages.get(stage, 0.0) + time.perf_counter() - start


PREDOWNSAMPLE = 1.5  # a level this much finer than the models is area-shrunk before predict_image


def work_factor(level_mpp: float, target: float) -> int:
    """Level pixels per work-grid pixel: 1, or the integer k with level_mpp * k <= target when the level is at
    least PREDOWNSAMPLE times finer than the models (a slide without a pyramid). The work arrays, post-processing
    and FTU tracing then run at about the models' um/px, never at the level's: a 20k single-strip TIFF read at
    0.5 um/px for a 4 um/px model keeps 2.5k x 2.5k work arrays, not 20k x 20k ones."""
    factor = target / level_mpp
    return 1 if factor < PREDOWNSAMPLE else max(1, math.floor(factor + 1e-6))


@dataclass(frozen=True)
class WorkGrid:
    """Where the work arrays live: pyramid level `level` shrunk by the integer `factor` (work_factor).

    Blocks, cores, regions, the zarr mask / probability and post-processing are in work-grid pixels; work pixel
    (x, y) covers level pixels [x * factor, (x + 1) * factor) (the last ones cut by the level's edge)."""

    level: int
    factor: int
    level_size: tuple[int, int]  # (width, height) of the level in its pixels
    level_mpp: float  # um per level pixel
    level_downsample: float  # level-0 pixels per level pixel

    @classmethod
    def at(cls, slide: Slide, level: int, factor: int = 1) -> WorkGrid:
        return cls(level, factor, tuple(slide.dimensions[level]), slide.level_mpp(level), slide.downsamples[level])

    @classmethod
    def for_models(cls, slide: Slide, target: float) -> WorkGrid:
        """The grid inference.wsi predicts on for models at `target` um/px: the level_for level, shrunk when finer."""
        level = slide.level_for(target)
        return cls.at(slide, level, work_factor(slide.level_mpp(level), target))

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the work arrays."""
        return math.ceil(self.level_size[1] / self.factor), math.ceil(self.level_size[0] / self.factor)

    @property
    def mpp(self) -> float:
        return self.level_mpp * self.factor

    @property
    def downsample(self) -> float:
        """Level-0 pixels per work-grid pixel."""
        return self.level_downsample * self.factor

    @property
    def span(self) -> tuple[float, float]:
        """(width, height) in work-grid pixels that level 0 covers (fractional at a cut edge)."""
        return self.level_size[0] / self.factor, self.level_size[1] / self.factor


BAND_BYTES = 32 << 20  # level-pixel RGB read at once when shrinking a region onto the work grid


def read_work_region(slide: Slide, grid: WorkGrid, region: tuple[int, int, int, int]) -> np.ndarray:
    """RGB of work-grid region (x0, y0, x1, y1): level pixels [x0 * k, x1 * k) read and area-shrunk by exactly k
    (the level's last row / column of pixels repeated where its size is not a multiple of k).

    The level pixels are read in bands of whole work rows (about BAND_BYTES each): an exact k x k area mean
    per band gives the same pixels as one resize of the whole region, at a band's memory."""
    x0, y0, x1, y1 = region
    level, k = grid.level, grid.factor
    if k == 1:
        return slide.read(level, x0, y0, x1 - x0, y1 - y0)
    lw, lh = grid.level_size
    width = (x1 - x0) * k
    band = max(1, BAND_BYTES // (width * 3 * k))  # work rows per band
    out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
    for by in range(y0, y1, band):
        by1 = min(y1, by + band)
        ly0, ly1 = by * k, min(lh, by1 * k)  # the grid is ceil(lh / k) rows: every band starts inside the level
        image = slide.read(level, x0 * k, ly0, min(lw, x1 * k) - x0 * k, ly1 - ly0)
        h, w = image.shape[:2]
        if (h, w) != ((by1 - by) * k, width):
            image = cv2.copyMakeBorder(image, 0, (by1 - by) * k - h, 0, width - w, cv2.BORDER_REPLICATE)
        out[by - y0 : by1 - y0] = cv2.resize(image, (x1 - x0, by1 - by), interpolation=cv2.INTER_AREA)
    return out


def _predict_region(
    image: np.ndarray, core: tuple[int, int, int, int], members: list[Member], options: WsiOptions,
    level_mpp: float, target: float, windows: WindowFilter,
) -> tuple[np.ndarray, np.ndarray, object]:
    """(uint8 0/1 mask, uint8 probability) of a region's core (x0, y0, x1, y1), and the Decision.

    A level much finer than the models (a slide without a pyramid) is area-shrunk to the models' um/px
    first and the core's probability resized back, so a block's full-resolution float maps never exist.
    """
    kwargs = dict(organ=options.organ, options=options, windows=windows)
    x0, y0, x1, y1 = core
    h, w = image.shape[:2]
    factor = target / level_mpp
    if factor < PREDOWNSAMPLE:
        decision = predict_image(image, members, pixel_size=level_mpp, **kwargs)
        return (decision.mask[y0:y1, x0:x1].astype(np.uint8),
                np.round(decision.probability[y0:y1, x0:x1] * 255).astype(np.uint8), decision)
    sw, sh = max(1, round(w / factor)), max(1, round(h / factor))
    small = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
    decision = predict_image(small, members, pixel_size=level_mpp * w / sw, **kwargs)
    # the core's footprint in the small image, grown to whole pixels, resized to level pixels and cut exactly
    fx, fy = sw / w, sh / h
    cx0, cy0 = int(x0 * fx), int(y0 * fy)
    cx1, cy1 = min(sw, math.ceil(x1 * fx) + 1), min(sh, math.ceil(y1 * fy) + 1)
    ox0, oy0 = round(cx0 / fx), round(cy0 / fy)
    size = (round(cx1 / fx) - ox0, round(cy1 / fy) - oy0)
    cut = (slice(y0 - oy0, y1 - oy0), slice(x0 - ox0, x1 - ox0))
    prob = cv2.resize(np.ascontiguousarray(decision.probability[cy0:cy1, cx0:cx1]), size, interpolation=cv2.INTER_LINEAR)[cut]
    mask = cv2.resize(np.ascontiguousarray(decision.mask[cy0:cy1, cx0:cx1]).view(np.uint8), size, interpolation=cv2.INTER_NEAREST)[cut]
    return mask, np.round(prob * 255).astype(np.uint8), decision


def predict_blocks(
    slide: Slide, grid: WorkGrid, members: list[Member], options: WsiOptions, work: WorkState,
    tissue: np.ndarray, thumb_factor: float,
) -> None:
    """Predict every unfinished block into the work arrays."""
    target = model_pixel_size(members)
    todo = [b for b in block_regions(grid, members, options.block, tissue, thumb_factor) if b.index not in work.done]
    # the next tissue block is read in a thread while this one is predicted (reads release the GIL in preadv,
    # tifffile's codecs and OpenSlide), so "read" is the time the loop waited for pixels, not the reading itself
    to_read = iter([b for b in todo if b.keep.any()])
    ahead: dict[int, Future] = {}

    def read_next() -> None:
        b = next(to_read, None)
        if b is not None:
            ahead[b.index] = reader.submit(read_work_region, slide, grid, b.region)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsi-read") as reader:
        read_next()
        for b in tqdm(todo, desc="wsi blocks", unit="block", total=len(todo)):
            _predict_block(b, ahead, read_next, members, options, work, grid.mpp, target)


def _predict_block(
    b: BlockRegion, ahead: dict[int, Future], read_next: Callable[[], None], members: list[Member],
    options: WsiOptions, work: WorkState, work_mpp: float, target: float,
) -> None:
    """Predict one block into the work arrays (its pixels from `ahead`, the next read started first) and record it."""
    state = work.state
    i, (x0, y0, x1, y1), (rx0, ry0, rx1, ry1), keep = b.index, b.core, b.region, b.keep
    if not keep.any():
        state["skipped_windows"] += _windows_in(members, ry1 - ry0, rx1 - rx0, work_mpp)
        state["blocks_without_tissue"] += 1
    else:
        read_next()
        with timed(state, "read"):
            image = ahead.pop(i).result()
        windows = WindowFilter(keep)
        core = (x0 - rx0, y0 - ry0, x1 - rx0, y1 - ry0)
        with timed(state, "predict"):
            mask, prob, decision = _predict_region(image, core, members, options, work_mpp, target, windows)
        work.mask[y0:y1, x0:x1] = mask
        work.prob[y0:y1, x0:x1] = prob
        state["predicted_windows"] += windows.predicted
        state["skipped_windows"] += windows.skipped
        if decision.class_index is not None:  # multiclass members: the block's majority organ
            key = str(decision.class_index)
            state["classes"][key] = state["classes"].get(key, 0) + windows.predicted
        if round(decision.threshold, 4) not in state["thresholds"]:
            state["thresholds"].append(round(decision.threshold, 4))
    work.done.add(i)
    work.save()


def run_side_by_side(tasks: dict[str, Callable[[], object]], state: dict) -> dict[str, object]:
    """Run independent output writers in threads, each timed as its own stage; the first error is raised."""
    def stage(name: str, task: Callable[[], object]) -> object:
        with timed(state, name):
            return task()

    with ThreadPoolExecutor(max_workers=len(tasks), thread_name_prefix="wsi-out") as pool:
        futures = {name: pool.submit(stage, name, task) for name, task in tasks.items()}
        return {name: future.result() for name, future in futures.items()}


def level0_strips(
    array, level0: tuple[int, int], rows: int = 256, binary: bool = True, span: tuple[float, float] | None = None
) -> Iterator[np.ndarray]:
    """Level-0 row strips (uint8) of a coarser array, nearest-sampled at pixel centres (binary: 0/255).

    `span` = (width, height) in array pixels that level 0 covers (default the array's size; a work grid whose
    last column covers only part of a level pixel block spans level width / k).
    """
    w0, h0 = level0
    lh, lw = array.shape
    sw, sh = span or (lw, lh)
    xs = np.minimum(((np.arange(w0) + 0.5) * sw / w0).astype(np.int64), lw - 1)
    for y in range(0, h0, rows):
        ys = np.minimum(((np.arange(y, min(y + rows, h0)) + 0.5) * sh / h0).astype(np.int64), lh - 1)
        band = np.asarray(array[int(ys[0]) : int(ys[-1]) + 1, :])[ys - ys[0]][:, xs]
        yield (band > 0).astype(np.uint8) * np.uint8(255) if binary else band.astype(np.uint8)


def min_area_for(options: WsiOptions, organ_key: str) -> float:
    """--min-area in um^2 for this slide: its organ's entry; a plain number (every organ equal) for any class."""
    areas = options.min_area_um2
    if organ_key in areas:
        return areas[organ_key]
    return next(iter(areas.values())) if len(set(areas.values())) == 1 else 0.0


def clean_mask(work: WorkState, options: WsiOptions, organ_key: str, level_mpp: float) -> object:
    """The work mask after --fill-holes / --min-area (inference.engine.postprocess on each component), on disk.

    Each 8-connected component is cleaned on its own crop and OR-ed back, so a filled hole covers the
    islands inside it (as on a whole image) and memory stays one component.
    """
    import zarr

    if not options.fill_holes and not options.min_area_um2:
        return work.mask
    path = work.folder / "clean.zarr"
    if work.state.get("cleaned"):
        return zarr.open_array(str(path), mode="r")
    shape = tuple(work.mask.shape)
    clean = zarr.create_array(store=str(path), shape=shape, chunks=(CHUNK, CHUNK), dtype="uint8",
                              fill_value=0, overwrite=True)
    # a work grid at the models' um/px is small (a 30k slide at 4 um/px: 14 MB): clean it in memory and write
    # the array once; an OR into zarr per FTU re-compresses its chunks each time (220 s for 10^4 FTUs)
    buffer = np.zeros(shape, np.uint8) if shape[0] * shape[1] <= IN_MEMORY_PIXELS else clean
    areas = {organ_key: min_area_for(options, organ_key)}
    for crop, (y0, x0, y1, x1) in tqdm(iter_components(work.mask), desc="post-process", unit="FTU"):
        kept = postprocess(crop, organ_key, level_mpp, holes=options.fill_holes, min_area_um2=areas)
        if kept.any():
            region = np.asarray(buffer[y0:y1, x0:x1])
            buffer[y0:y1, x0:x1] = np.maximum(region, kept.astype(np.uint8))
    if buffer is not clean:
        clean[:] = buffer
    work.state["cleaned"] = True
    work.save()
    return clean


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
    _write_png(heatmap, colour)
    ftu = (shrink(work.mask, size) >= 0.5).astype(np.uint8)
    picture = cv2.cvtColor(thumb, cv2.COLOR_RGB2BGR)
    tint = picture.copy()
    tint[ftu > 0] = (255, 255, 0)
    picture = cv2.addWeighted(picture, 0.75, tint, 0.25, 0)
    contours, _ = cv2.findContours(ftu, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(picture, contours, -1, (255, 255, 0), 1)
    _write_png(overlay, picture)


def _write_png(path: Path, bgr: np.ndarray) -> None:
    """Encode a BGR picture as PNG and write it atomically."""
    ok, data = cv2.imencode(".png", bgr)
    if not ok:
        raise OSError(f"cannot encode {path} as PNG")
    write_bytes(path, data.tobytes())


def output_paths(out: Path, stem: str, mask_format: str = "tiff") -> dict[str, Path]:
    """Every file a finished slide leaves in DIR."""
    mask = "_mask.ome.tif" if mask_format == "ome" else "_mask.tif"
    return {k: out / f"{stem}{suffix}" for k, suffix in
            (("mask", mask), ("prob", "_prob.tif"), ("heatmap", "_heatmap.png"), ("overlay", "_overlay.png"),
             ("geojson", ".geojson"), ("csv", "_ftus.csv"), ("summary", "_summary.json"))}


def work_state(out: Path, stem: str) -> dict | None:
    """DIR/S_work/state.json of a slide (None when missing or unreadable)."""
    try:
        state = json.loads((out / f"{stem}_work" / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def is_finished(out: Path, stem: str, mask_format: str, run: str) -> bool:
    """Does DIR hold a finished prediction of this slide by this run (state finished with the same run_digest,
    every output present)? A slide finished with other models, settings or an older file is not."""
    state = work_state(out, stem)
    if state is None or not state.get("finished") or state.get("run") != run:
        return False
    return all(p.is_file() for p in output_paths(out, stem, mask_format).values())


def _slide_class(options: WsiOptions, state: dict) -> tuple[str, str]:
    """(organ key for --min-area, name for the FTU class): --organ, else the multiclass majority, else FTU."""
    if options.organ:
        return options.organ, options.organ
    if state["classes"]:
        index = int(max(state["classes"], key=lambda k: state["classes"][k]))
        if 0 < index < len(CLASSES):
            return CLASSES[index], CLASSES[index]
    return "FTU", "FTU"


def predict_slide(
    slide_path: Path, members: list[Member], out: Path, options: WsiOptions, reader: str = "auto",
    mpp: float | None = None, overwrite: bool = False, run: str | None = None,
) -> dict:
    """Predict one slide into DIR/S_* outputs (resuming unfinished work); return the summary.

    run: the command's run_digest, recorded in the work state for is_finished (the CLI and cohorts pass it).
    """
    if options.block % CHUNK:
        raise ValueError(f"--block must be a multiple of {CHUNK}, got {options.block}")
    if options.mask_format not in MASK_FORMATS:
        raise ValueError(f"--mask-format {options.mask_format!r} not in {MASK_FORMATS}")
    if options.objects not in OBJECT_TYPES:
        raise ValueError(f"--objects {options.objects!r} not in {OBJECT_TYPES}")
    slide_path = Path(slide_path)
    out.mkdir(parents=True, exist_ok=True)
    stem = slide_stem(slide_path)
    paths = output_paths(out, stem, options.mask_format)
    start = time.perf_counter()
    work_dir = out / f"{stem}_work"
    if overwrite:
        shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    with open_slide(slide_path, reader, mpp, work=work_dir) as slide:
        if slide.mpp is None:
            raise ValueError(f"{slide_path}: no pixel size in the file's metadata; pass --mpp (um per level-0 pixel)")
        target = model_pixel_size(members)
        grid = WorkGrid.for_models(slide, target)
        level, (lw, lh) = grid.level, grid.level_size
        fingerprint = _fingerprint(slide, slide_path, level, members, options) | {
            "work_factor": grid.factor, "block_unit": "work-grid px"}
        work = WorkState(work_dir, fingerprint, grid.shape, False, run)
        state = work.state
        if state["finished"] and all(p.is_file() for p in paths.values()):
            print(f"{slide_path} is already predicted into {out} (pass --overwrite to redo it)")
            return state["summary"]
        with timed(state, "tissue"):
            thumb, thumb_factor = thumbnail(slide, options.thumbnail_side)
            tissue = tissue_mask(thumb, slide.mpp * thumb_factor)
        log.info("%s: %dx%d px at %.4g um/px (%s reader, mpp from %s); level %d (%dx%d, %.4g um/px) for models at "
                 "%.4g um/px; work grid %dx%d at %.4g um/px", slide_path.name, *slide.dimensions[0], slide.mpp,
                 slide.reader, slide.mpp_source, level, lw, lh, grid.level_mpp, target, grid.shape[1], grid.shape[0],
                 grid.mpp)
        predict_blocks(slide, grid, members, options, work, tissue, thumb_factor)
        level0 = slide.dimensions[0]
        span = grid.span
        scale = (level0[0] / span[0], level0[1] / span[1])
        organ_key, class_name = _slide_class(options, state)
        with timed(state, "postprocess"):
            mask = clean_mask(work, options, organ_key, grid.mpp)
        layout = "subifds" if options.mask_format == "ome" else "chain"
        outputs = {  # three independent writers over the finished arrays, side by side (zlib, cv2 and numpy
            # release the GIL): their stage seconds overlap
            "ftus": lambda: write_ftus(iter_ftus(mask, scale, work.prob), paths["geojson"], paths["csv"], slide.mpp,
                                       class_name, slide=stem, objects=options.objects),
            "mask_pyramid": lambda: write_pyramid(paths["mask"], level0_strips(mask, level0, span=span), level0[1],
                                                  level0[0], mpp=slide.mpp, layout=layout, mask=True),
            "prob_pyramid": lambda: write_pyramid(paths["prob"], level0_strips(work.prob, level0, binary=False,
                                                                               span=span),
                                                  level0[1], level0[0], mpp=slide.mpp, layout="chain", grey=True),
        }
        totals = run_side_by_side(outputs, state)["ftus"]
        with timed(state, "pictures"):
            write_pictures(thumb, work, paths["heatmap"], paths["overlay"])
        area_um2 = round(totals["area_px"] * slide.mpp**2, 1)
        summary = {
            "slide": str(slide_path), "stem": stem, "reader": slide.reader, "mpp": slide.mpp,
            "mpp_source": slide.mpp_source, "dimensions": list(level0),
            "level": level, "level_mpp": slide.level_mpp(level), "model_mpp": target,
            "work_mpp": grid.mpp, "work_dimensions": [grid.shape[1], grid.shape[0]],
            "models": [{"folder": m.predictor.name, "weight": m.weight,
                        "pixel_size": m.predictor.config.pixel_size} for m in members],
            "organ": options.organ, "thresholds": sorted(state["thresholds"]),
            "ensemble": options.ensemble, "tta": options.tta, "fill_holes": options.fill_holes,
            "min_area_um2": min_area_for(options, organ_key),
            "blocks": len(_blocks(*grid.shape, options.block)),
            "blocks_without_tissue": state["blocks_without_tissue"],
            "predicted_windows": state["predicted_windows"], "skipped_windows": state["skipped_windows"],
            "ftus": totals["ftus"], "ftu_area_um2": area_um2,
            "classes": {totals["class"]: {"ftus": totals["ftus"], "area_um2": area_um2,
                                          "color": list(ftu_class(class_name)[1])}},
            "heatmap_um_per_px": round(slide.mpp * thumb_factor, 4),
            "seconds": round(time.perf_counter() - start, 1),
            "stage_seconds": {k: round(v, 2) for k, v in state["stage_seconds"].items()}, "outputs": {k: str(p) for k, p in paths.items()},
        }
        write_json(paths["summary"], summary, indent=1)
        state.update(finished=True, summary=summary)
        work.save()
    return summary
