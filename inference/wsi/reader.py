"""Whole-slide images: read pyramids region by region, and write tiled pyramidal TIFFs strip by strip.

Readers (open_slide, `auto` routing):
- OpenSlideSlide: vendor formats (.svs, .ndpi, .mrxs, .scn, ...) and TIFFs whose OpenSlide vendor is not
  `generic-tiff` (Aperio, Hamamatsu, Philips, Ventana, Leica TIFFs keep the mpp only OpenSlide parses); the
  openslide-bin wheel carries the library, so no system package is needed;
- TiffSlide: OME-TIFF and generic TIFF through tifffile, one tile or strip decoded at a time (imagecodecs
  covers LZW, JPEG, JPEG 2000, zstd, ...; a small LRU cache keeps recently decoded tiles). Levels are the
  series' pyramid (SubIFDs or reduced-resolution pages). An uncompressed strip TIFF (what `tifffile.imwrite`
  writes by default: one strip) is read row by row into the region (preadv), so RSS stays one region;
  a compressed strip TIFF is converted once, with a warning, into a tiled pyramid in the work folder.
Both give level sizes, downsamples, the level-0 micrometres per pixel (`mpp=` > OME PhysicalSizeX /
openslide.mpp-x / Aperio MPP / TIFF resolution tags > objective power, with a warning) and
`read(level, x, y, w, h)` in that level's pixels as (h, w, 3) uint8 RGB. An mpp outside
inference.organs.PIXEL_SIZE_RANGE is refused (metadata in mm read as um once made a run allocate 19.8 GB).
A tile that does not decode raises ImageReadError with a one-line message.

write_pyramid writes a tiled, zlib-compressed pyramid from level-0 row strips given in order, downsampling
by 2 per level through temporary files, so memory stays a few strips whatever the size. Layout "chain"
(OpenSlide's generic tiled TIFF: levels as top-level pages, reduced ones with SUBFILETYPE=1, X/YResolution
in pixels per cm; OpenSlide, MONAI's WSIReader, QuPath and tifffile see every level and the mpp) or
"subifds" (OME-TIFF with SubIFD levels, what Bio-Formats prefers; OpenSlide shows level 0 only).
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import tifffile

from inference.atomic import atomic_write
from inference.io import ImageReadError, to_rgb_uint8
from inference.organs import PIXEL_SIZE_RANGE

log = logging.getLogger("inference.wsi.reader")
READERS = ("auto", "tifffile", "openslide")
LAYOUTS = ("chain", "subifds")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
_UM_PER_UNIT = {"m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "nm": 1e-3}
TILE_CACHE_BYTES = 128 * 2**20  # decoded tiles kept: a block's margin re-reads its neighbours' edge tiles


class Slide:
    """A pyramid: level sizes (w, h) from level 0 (full resolution) down, and region reads."""

    path: Path
    dimensions: list[tuple[int, int]]  # (width, height) per level
    mpp: float | None  # level-0 micrometres per pixel
    mpp_source: str = ""  # where mpp came from: "--mpp", "metadata", "objective power"
    reader: str = ""

    @property
    def downsamples(self) -> list[float]:
        """Level-0 pixels per level pixel, per level (mean of the two axes)."""
        w0, h0 = self.dimensions[0]
        return [(w0 / w + h0 / h) / 2 for w, h in self.dimensions]

    def level_mpp(self, level: int) -> float:
        """Micrometres per pixel of one level."""
        if self.mpp is None:
            raise ValueError(f"{self.path}: no pixel size in the file's metadata; pass --mpp (um per level-0 pixel)")
        return self.mpp * self.downsamples[level]

    def level_for(self, mpp: float, tolerance: float = 1.1) -> int:
        """The coarsest level at most `tolerance` x `mpp` um/px (level 0 if none): read there, then downsample.

        A 0.8 um/px model reads the 0.5 level of a 0.25 / 0.5 / 1.0 pyramid, not the 1.0 level upsampled.
        """
        fine = [i for i in range(len(self.dimensions)) if self.level_mpp(i) <= tolerance * mpp]
        return max(fine, key=self.level_mpp) if fine else 0

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8 RGB of a region in level pixels; parts outside the slide are white."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_mpp(path: Path, value: float, source: str) -> float:
    """Refuse an um/px outside PIXEL_SIZE_RANGE, naming the value, where it came from and --mpp."""
    lo, hi = PIXEL_SIZE_RANGE
    if not (math.isfinite(value) and lo <= value <= hi):
        where = "--mpp" if source == "--mpp" else f"the file's {source}"
        raise ImageReadError(
            f"{path}: pixel size {value:g} um/px from {where} is outside [{lo:g}, {hi:g}] um/px "
            "(a value in mm or nm?); pass --mpp with the um per level-0 pixel"
        )
    return float(value)


def resolve_mpp(
    path: Path, given: float | None, metadata: float | None, objective: float | None
) -> tuple[float | None, str]:
    """(level-0 um/px, its source): --mpp, else metadata, else 10 / objective power (with a warning), else None."""
    if given is not None:
        return check_mpp(path, given, "--mpp"), "--mpp"
    if metadata:
        return check_mpp(path, metadata, "metadata"), "metadata"
    if objective and objective > 0:
        # the usual microscope convention: 40x ~ 0.25 um/px, 20x ~ 0.5 um/px (cameras vary by +-20%)
        value = check_mpp(path, 10.0 / objective, f"objective power {objective:g}x")
        log.warning("%s: no pixel size in the metadata; using 10 / objective power %gx = %g um/px "
                    "(pass --mpp for the scanner's exact value)", path, objective, value)
        return value, "objective power"
    return None, ""


def _clip_read(slide: Slide, level: int, x: int, y: int, width: int, height: int, read) -> np.ndarray:
    """Read the in-bounds part with read(x0, y0, x1, y1) and pad the rest white."""
    lw, lh = slide.dimensions[level]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + width, lw), min(y + height, lh)
    out = np.full((height, width, 3), 255, np.uint8)
    if x1 > x0 and y1 > y0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = read(x0, y0, x1, y1)
    return out


def _ome_pixels(ome_xml: str) -> dict:
    image = tifffile.xml2dict(ome_xml).get("OME", {}).get("Image", {})
    return (image[0] if isinstance(image, list) else image).get("Pixels", {})


def _ome_mpp(ome_xml: str) -> float | None:
    """PhysicalSizeX of the first OME image, in micrometres."""
    pixels = _ome_pixels(ome_xml)
    size = pixels.get("PhysicalSizeX")
    if size is None:
        return None
    return float(size) * _UM_PER_UNIT.get(str(pixels.get("PhysicalSizeXUnit", "µm")), 1.0)


def _ome_objective(ome_xml: str) -> float | None:
    """NominalMagnification of the first OME objective."""
    instrument = tifffile.xml2dict(ome_xml).get("OME", {}).get("Instrument", {})
    instrument = instrument[0] if isinstance(instrument, list) else instrument
    objective = instrument.get("Objective", {}) if isinstance(instrument, dict) else {}
    objective = objective[0] if isinstance(objective, list) else objective
    value = objective.get("NominalMagnification") if isinstance(objective, dict) else None
    return float(value) if value else None


def _resolution_mpp(page: tifffile.TiffPage) -> float | None:
    """Micrometres per pixel from XResolution/ResolutionUnit (inch or centimetre), None when unset."""
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    num, den = tags["XResolution"].value
    unit = int(tags["ResolutionUnit"].value)
    if not num or not den or unit not in (2, 3):
        return None
    per_unit = num / den
    if unit == 2 and per_unit in (72.0, 96.0, 300.0):  # screen/print defaults, not a microscope scale
        return None
    return (25400.0 if unit == 2 else 10000.0) / per_unit


class TiffSlide(Slide):
    """OME-TIFF / generic TIFF pyramid read a tile (or strip) at a time with tifffile, or row by row when raw."""

    reader = "tifffile"

    def __init__(self, path: str | Path, mpp: float | None = None, source: Path | None = None) -> None:
        self.path = Path(source or path)  # a converted copy reports its original
        self._file = Path(path)
        try:
            self._tif = tifffile.TiffFile(self._file)
            series = self._tif.series[0]
            self._pages = [level.keyframe for level in series.levels]
        except Exception as exc:  # tifffile raises many types for corrupt files
            raise ImageReadError(f"cannot open slide {self.path} with tifffile: {exc}") from exc
        self.dimensions = [(int(p.imagewidth), int(p.imagelength)) for p in self._pages]
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cached = 0
        metadata, objective = self._metadata()
        self.mpp, self.mpp_source = resolve_mpp(self.path, mpp, metadata, objective)

    def _metadata(self) -> tuple[float | None, float | None]:
        """(um/px, objective power) from OME, Aperio or resolution tags."""
        tif, page = self._tif, self._tif.pages.first
        objective = None
        if tif.is_ome and tif.ome_metadata:
            objective = _ome_objective(tif.ome_metadata)
            value = _ome_mpp(tif.ome_metadata)
            if value:
                return value, objective
        if tif.is_svs:
            found = re.search(r"MPP\s*=\s*([0-9.]+)", page.description)
            power = re.search(r"AppMag\s*=\s*([0-9.]+)", page.description)
            objective = float(power.group(1)) if power else objective
            if found:
                return float(found.group(1)), objective
        return _resolution_mpp(page), objective

    @staticmethod
    def needs_conversion(page: tifffile.TiffPage) -> bool:
        """A compressed strip page: reading a region would decode whole (possibly slide-sized) strips."""
        return not page.is_tiled and page.compression != 1

    def _raw(self, page: tifffile.TiffPage, x0: int, y0: int, x1: int, y1: int) -> np.ndarray | None:
        """The region of an uncompressed contiguous page read row by row with preadv (None when it is not one).

        Each row's bytes go straight into the output array: no memory map, so neither the rows' other columns nor
        the page cache count in the process's RSS, which stays the region itself.
        """
        if page.compression != 1 or not page.is_contiguous or page.planarconfig != 1:
            return None
        samples, itemsize = page.samplesperpixel, np.dtype(page.dtype).itemsize
        row_bytes = page.imagewidth * samples * itemsize
        out = np.empty((y1 - y0, x1 - x0, samples), page.dtype)
        start = page.dataoffsets[0] + x0 * samples * itemsize
        fd = self._tif.filehandle.fileno()
        for i, row in enumerate(out):
            view = memoryview(row.reshape(-1).view(np.uint8))
            if os.preadv(fd, [view], start + (y0 + i) * row_bytes) != view.nbytes:
                raise ImageReadError(f"{self.path}: the file ends inside pixel row {y0 + i} (truncated?)")
        return out

    def _segment(self, level: int, page: tifffile.TiffPage, index: int) -> np.ndarray:
        """Decoded tile or strip `index` of a level as (rows, cols, samples), through the LRU cache."""
        key = (level, index)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        with self._lock:
            fh = self._tif.filehandle
            offset, count = page.dataoffsets[index], page.databytecounts[index]
            data = None
            if offset and count:
                fh.seek(offset)
                data = fh.read(count)
        try:
            segment, _, shape = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as exc:  # imagecodecs raises its own error types per codec
            kind = "tile" if page.is_tiled else "strip"
            raise ImageReadError(
                f"{self.path}: cannot decode {kind} {index} of level {level} ({page.compression.name}): "
                f"{type(exc).__name__}: {exc}"
            ) from None
        if segment is None:  # an empty segment: no data written there
            segment = np.zeros(shape, page.dtype)
        segment = np.asarray(segment).reshape(shape[-3:])
        self._cache[key] = segment
        self._cached += segment.nbytes
        while self._cached > TILE_CACHE_BYTES and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= old.nbytes
        return segment

    def _decoded(self, level: int, page: tifffile.TiffPage, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """The region assembled from the tiles or strips that cover it."""
        if page.planarconfig != 1:
            raise ImageReadError(f"{self.path}: planar-separate samples are not supported; convert the slide "
                                 "(e.g. `vips tiffsave in.tif out.tif --tile --pyramid`)")
        if page.is_tiled:
            th, tw = page.tilelength, page.tilewidth
        else:
            th, tw = min(page.rowsperstrip or page.imagelength, page.imagelength), page.imagewidth
        ntx = math.ceil(page.imagewidth / tw)
        out = np.empty((y1 - y0, x1 - x0, page.samplesperpixel), page.dtype)
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                seg = self._segment(level, page, ty * ntx + tx)
                sy0, sx0 = ty * th, tx * tw
                ay0, ay1 = max(y0, sy0), min(y1, sy0 + seg.shape[0])
                ax0, ax1 = max(x0, sx0), min(x1, sx0 + seg.shape[1])
                if ay1 > ay0 and ax1 > ax0:
                    out[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = seg[ay0 - sy0 : ay1 - sy0, ax0 - sx0 : ax1 - sx0]
        return out

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        page = self._pages[level]

        def region(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            array = self._raw(page, x0, y0, x1, y1) if not page.is_tiled else None
            if array is None:
                array = self._decoded(level, page, x0, y0, x1, y1)
            return to_rgb_uint8(array, str(self.path), int(page.bitspersample))

        return _clip_read(self, level, x, y, width, height, region)

    def close(self) -> None:
        self._cache.clear()
        self._tif.close()


class OpenSlideSlide(Slide):
    """Vendor pyramids (.svs, .ndpi, .mrxs, ...) and generic tiled TIFF through OpenSlide."""

    reader = "openslide"

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        import openslide  # the openslide-bin wheel provides the shared library

        self.path = Path(path)
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except Exception as exc:  # OpenSlideUnsupportedFormatError, OpenSlideError, OSError
            raise ImageReadError(f"cannot open slide {self.path} with OpenSlide: {exc}") from exc
        self.dimensions = [tuple(int(v) for v in d) for d in self._slide.level_dimensions]
        props = self._slide.properties
        found = props.get("openslide.mpp-x")
        power = props.get("openslide.objective-power")
        self.mpp, self.mpp_source = resolve_mpp(self.path, mpp, float(found) if found else None,
                                                float(power) if power else None)

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        ds = self._slide.level_downsamples[level]

        def region(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            try:
                rgba = np.asarray(self._slide.read_region((round(x0 * ds), round(y0 * ds)), level,
                                                          (x1 - x0, y1 - y0)))
            except Exception as exc:  # OpenSlideError: a tile that does not decode
                raise ImageReadError(f"{self.path}: OpenSlide cannot read level {level} at ({x0}, {y0}): "
                                     f"{exc}") from None
            rgb = rgba[..., :3].copy()
            rgb[rgba[..., 3] == 0] = 255  # OpenSlide marks areas without data transparent: bare glass
            return rgb

        return _clip_read(self, level, x, y, width, height, region)

    def close(self) -> None:
        self._slide.close()


def route(path: Path) -> str:
    """`auto` routing: OpenSlide for non-TIFF files and TIFFs it knows by vendor; tifffile for OME / generic TIFF."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return "openslide"
    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_ome:
                return "tifffile"
    except Exception as exc:
        raise ImageReadError(f"cannot open slide {path} as a TIFF: {exc}") from exc
    import openslide

    vendor = openslide.OpenSlide.detect_format(str(path))
    return "openslide" if vendor not in (None, "generic-tiff") else "tifffile"


def _converted_strips(slide: TiffSlide, rows: int = 1024) -> Iterator[np.ndarray]:
    """Level-0 RGB row strips of a strip TIFF; the tile cache keeps the last strip, so each is decoded once."""
    w, h = slide.dimensions[0]
    for y in range(0, h, rows):
        yield slide.read(0, 0, y, w, min(rows, h - y))


def convert_to_pyramid(slide: TiffSlide, folder: Path) -> Path:
    """Write a compressed strip TIFF once as a tiled chain pyramid in `folder`; reuse it while the source is unchanged."""
    stat = slide.path.stat()
    key = f"{slide.path.name}-{stat.st_size}-{int(stat.st_mtime)}"
    target = Path(folder) / f"converted-{re.sub(r'[^A-Za-z0-9._-]', '_', key)}.tif"
    if target.is_file():
        return target
    page = slide._pages[0]
    strip_mb = page.imagewidth * min(page.rowsperstrip or page.imagelength, page.imagelength) * \
        page.samplesperpixel * page.dtype.itemsize / 2**20
    log.warning("%s: %s-compressed strips (%d rows each, %.0f MiB decoded) have no tiles to read a region from; "
                "converting once to a tiled pyramid %s", slide.path, page.compression.name,
                page.rowsperstrip or page.imagelength, strip_mb, target)
    w, h = slide.dimensions[0]
    return write_pyramid(target, _converted_strips(slide), h, w, mpp=slide.mpp, layout="chain")


def open_slide(
    path: str | Path, reader: str = "auto", mpp: float | None = None, work: Path | None = None
) -> Slide:
    """Open a slide (see the module docstring for `auto`); `work` holds converted copies of compressed strip TIFFs."""
    path = Path(path)
    if reader not in READERS:
        raise ValueError(f"reader {reader!r} not in {READERS}")
    if not path.exists():
        raise ImageReadError(f"slide not found: {path}")
    if reader == "auto":
        reader = route(path)
    if reader == "openslide":
        return OpenSlideSlide(path, mpp)
    slide = TiffSlide(path, mpp)
    if len(slide.dimensions) == 1 and TiffSlide.needs_conversion(slide._pages[0]):
        folder = Path(work) if work is not None else Path(tempfile.gettempdir()) / "inference-wsi"
        try:
            converted = convert_to_pyramid(slide, folder)
            resolved, source = slide.mpp, slide.mpp_source
        finally:
            slide.close()
        slide = TiffSlide(converted, resolved, source=path)
        slide.mpp_source = source
    return slide


def thumbnail(slide: Slide, max_side: int = 2048, block: int = 4096) -> tuple[np.ndarray, float]:
    """(RGB image with longer side about max_side, level-0 pixels per thumbnail pixel), read block-wise.

    Reads the coarsest level at least max_side long in blocks and area-shrinks each, so a slide without
    low levels still costs only one block of memory.
    """
    w0, h0 = slide.dimensions[0]
    factor = max(1.0, max(w0, h0) / max_side)
    level = max((i for i, (w, h) in enumerate(slide.dimensions) if max(w, h) >= max(w0, h0) / factor), default=0)
    lw, lh = slide.dimensions[level]
    tw, th = max(1, round(w0 / factor)), max(1, round(h0 / factor))
    sx, sy = tw / lw, th / lh
    out = np.full((th, tw, 3), 255, np.uint8)
    for y in range(0, lh, block):
        for x in range(0, lw, block):
            w, h = min(block, lw - x), min(block, lh - y)
            tx0, ty0 = round(x * sx), round(y * sy)
            tx1, ty1 = max(tx0 + 1, round((x + w) * sx)), max(ty0 + 1, round((y + h) * sy))
            region = slide.read(level, x, y, w, h)
            out[ty0:ty1, tx0:tx1] = cv2.resize(region, (tx1 - tx0, ty1 - ty0), interpolation=cv2.INTER_AREA)
    return out, w0 / tw


def _strips(source: Iterable[np.ndarray], height: int) -> Iterator[np.ndarray]:
    """Re-cut row strips of any heights into strips of exactly `height` rows (the last may be shorter)."""
    pending: list[np.ndarray] = []
    rows = 0
    for strip in source:
        pending.append(strip)
        rows += len(strip)
        while rows >= height:
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield joined[:height]
            rest = joined[height:]
            pending, rows = ([rest] if len(rest) else []), len(rest)
    if rows:
        yield np.concatenate(pending) if len(pending) > 1 else pending[0]


def _halve(strip: np.ndarray, mask: bool) -> np.ndarray:
    """Area-downscale a strip by 2 (rounding sizes up); a 0/255 mask stays 0/255."""
    h, w = strip.shape[:2]
    small = cv2.resize(strip, (max(1, (w + 1) // 2), max(1, (h + 1) // 2)), interpolation=cv2.INTER_AREA)
    return np.where(small >= 128, 255, 0).astype(np.uint8) if mask else small


def pyramid_sizes(height: int, width: int, min_side: int = 1024) -> list[tuple[int, int]]:
    """(h, w) of every level: halved (rounding up) until the longer side is at most min_side."""
    sizes = [(height, width)]
    while max(sizes[-1]) > min_side:
        h, w = sizes[-1]
        sizes.append((max(1, (h + 1) // 2), max(1, (w + 1) // 2)))
    return sizes


def write_pyramid(
    path: str | Path,
    strips: Iterable[np.ndarray],
    height: int,
    width: int,
    mpp: float | None = None,
    layout: str = "chain",
    tile: int = 256,
    mask: bool = False,
    min_side: int = 1024,
    description: str | None = None,
    grey: bool = False,
    compression: str = "zlib",
) -> Path:
    """Write a tiled pyramidal TIFF from level-0 row strips (top to bottom, full width, any heights).

    RGB uint8 strips (h, w, 3), 2-D uint8 masks (mask=True: 0/255, levels stay 0/255) or 2-D uint8 maps
    (grey=True: levels area-averaged, e.g. a probability map). `mpp` goes into the resolution tags (pixels
    per cm) and OME PhysicalSizeX with layout "subifds". `compression` is a tifffile codec name (zlib, lzw,
    jpeg, ...). Written atomically (inference.atomic).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} not in {LAYOUTS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sizes = pyramid_sizes(height, width, min_side)
    ome = layout == "subifds"
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".pyramid-") as scratch, atomic_write(
        path, "wb", suffix=".tif"
    ) as handle, tifffile.TiffWriter(tifffile.FileHandle(handle, name=path.name), bigtiff=True, ome=ome) as tif:
        channels = () if mask or grey else (3,)
        source: Iterable[np.ndarray] = strips
        for level, (lh, lw) in enumerate(sizes):
            nxt = Path(scratch) / f"level{level + 1}.raw"
            has_next = level + 1 < len(sizes)
            sink = nxt.open("wb") if has_next else None
            expected = [lh, lw]

            def tiles(source: Iterable[np.ndarray] = source, sink=sink, expected=expected, lh: int = lh
                      ) -> Iterator[np.ndarray]:
                # tifffile stops pulling after the last tile, so each strip is fully handled before its tiles go
                carry = None
                for strip in _strips(source, tile):
                    if strip.shape[1] != expected[1] or strip.shape[2:] != channels:
                        raise ValueError(f"strip of shape {strip.shape}; expected width {expected[1]}, "
                                         f"channels {channels or 'none (2-D)'}")
                    expected[0] -= len(strip)
                    if expected[0] < 0 or (expected[0] > 0 and len(strip) < tile):
                        raise ValueError(f"level-0 strips gave {lh - expected[0]} rows; expected {lh}")
                    if sink is not None:  # halve pairs of rows; an odd last row is halved alone
                        rows = strip if carry is None else np.concatenate([carry, strip])
                        even = len(rows) - len(rows) % 2 if expected[0] else len(rows)
                        if even:
                            sink.write(np.ascontiguousarray(_halve(rows[:even], mask and not grey)).tobytes())
                        carry = rows[even:] if len(rows) > even else None
                    for x in range(0, strip.shape[1], tile):
                        yield np.ascontiguousarray(strip[:, x : x + tile])
                if expected[0] != 0:
                    raise ValueError(f"level-0 strips gave {lh - expected[0]} rows; expected {lh}")

            scale = 2**level
            options = dict(
                shape=(lh, lw, *channels), dtype=np.uint8, tile=(tile, tile), compression=compression,
                photometric="rgb" if channels else "minisblack",
            )
            if mpp:
                options.update(resolution=(1e4 / (mpp * scale), 1e4 / (mpp * scale)), resolutionunit="CENTIMETER")
            if level == 0:
                extra: dict = {"subifds": len(sizes) - 1} if ome else {}
                if ome:
                    meta = {"axes": "YXS" if channels else "YX"}
                    if mpp:
                        meta.update(PhysicalSizeX=mpp, PhysicalSizeXUnit="µm", PhysicalSizeY=mpp,
                                    PhysicalSizeYUnit="µm")
                    extra["metadata"] = meta
                else:
                    extra.update(metadata=None, description=description)
                tif.write(tiles(), **options, **extra)
            else:
                tif.write(tiles(), subfiletype=1, **options, **({} if ome else {"metadata": None}))
            if sink is not None:
                sink.close()
                source = _raw_strips(nxt, sizes[level + 1], channels, tile)
    return path


def _raw_strips(path: Path, size: tuple[int, int], channels: tuple[int, ...], rows: int) -> Iterator[np.ndarray]:
    """Read a raw uint8 (h, w, *channels) file back in strips of `rows` rows (no memory map: bounded RSS)."""
    h, w = size
    row_bytes = w * int(np.prod(channels or (1,)))
    with path.open("rb") as fh:
        for y in range(0, h, rows):
            n = min(rows, h - y)
            data = fh.read(n * row_bytes)
            if len(data) != n * row_bytes:
                raise OSError(f"{path}: expected {n * row_bytes} bytes of pyramid rows, got {len(data)}")
            yield np.frombuffer(data, np.uint8).reshape(n, w, *channels)
