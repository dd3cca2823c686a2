"""Whole-slide images: read pyramids region by region, and write tiled pyramidal TIFFs strip by strip.

Readers (open_slide):
- TiffSlide: OME-TIFF and generic tiled TIFF through tifffile's zarr store (`tifffile.imread(path, aszarr=True)`
  opened with zarr); levels are the series' pyramid (SubIFDs or reduced-resolution pages);
- OpenSlideSlide: vendor formats (.svs, .ndpi, .mrxs, .scn, ...) through OpenSlide (the openslide-bin wheel
  carries the library, so no system package is needed).
Both give level sizes, downsamples, the level-0 micrometres per pixel (OME PhysicalSizeX, openslide.mpp-x,
Aperio's MPP, or TIFF resolution tags; `mpp=` overrides) and `read(level, x, y, w, h)` in that level's pixels
as (h, w, 3) uint8 RGB. Memory is what one region needs, whatever the slide size.

write_pyramid writes a tiled, zlib-compressed pyramid from level-0 row strips given in order, downsampling
by 2 per level through temporary files, so memory stays a few strips whatever the size. Layout "subifds"
(OME-TIFF: levels in SubIFDs, read by tifffile, Bio-Formats/QuPath; OpenSlide shows level 0) or "chain"
(levels as reduced-resolution pages: OpenSlide's generic tiled TIFF shows every level, tifffile too).
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import tifffile

from inference.io import ImageReadError, to_rgb_uint8

READERS = ("auto", "tifffile", "openslide")
LAYOUTS = ("subifds", "chain")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
_UM_PER_UNIT = {"m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "nm": 1e-3}


class Slide:
    """A pyramid: level sizes (w, h) from level 0 (full resolution) down, and region reads."""

    path: Path
    dimensions: list[tuple[int, int]]  # (width, height) per level
    mpp: float | None  # level-0 micrometres per pixel

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

    def nearest_level(self, mpp: float) -> int:
        """The level whose um/px is nearest `mpp` on a log scale."""
        return int(np.argmin([abs(math.log(self.level_mpp(i) / mpp)) for i in range(len(self.dimensions))]))

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8 RGB of a region in level pixels; parts outside the slide are white."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _clip_read(slide: Slide, level: int, x: int, y: int, width: int, height: int, read) -> np.ndarray:
    """Read the in-bounds part with read(x0, y0, x1, y1) and pad the rest white."""
    lw, lh = slide.dimensions[level]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + width, lw), min(y + height, lh)
    out = np.full((height, width, 3), 255, np.uint8)
    if x1 > x0 and y1 > y0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = read(x0, y0, x1, y1)
    return out


def _ome_mpp(ome_xml: str) -> float | None:
    """PhysicalSizeX of the first OME image, in micrometres."""
    pixels = tifffile.xml2dict(ome_xml).get("OME", {}).get("Image", {})
    pixels = (pixels[0] if isinstance(pixels, list) else pixels).get("Pixels", {})
    size = pixels.get("PhysicalSizeX")
    if size is None:
        return None
    return float(size) * _UM_PER_UNIT.get(str(pixels.get("PhysicalSizeXUnit", "µm")), 1.0)


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
    """OME-TIFF / tiled TIFF pyramid read through tifffile's zarr store."""

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        import zarr

        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
            series = self._tif.series[0]
            self._axes = series.axes
            self._store = series.aszarr()
            root = zarr.open(self._store, mode="r")
        except Exception as exc:  # tifffile raises many types for corrupt files
            raise ImageReadError(f"cannot open slide {self.path} with tifffile: {exc}") from exc
        self._levels = [root[str(i)] for i in range(len(series.levels))] if hasattr(root, "keys") else [root]
        ix, iy = self._axes.index("X"), self._axes.index("Y")
        self.dimensions = [(int(a.shape[ix]), int(a.shape[iy])) for a in self._levels]
        self.mpp = mpp if mpp is not None else self._metadata_mpp()

    def _metadata_mpp(self) -> float | None:
        tif = self._tif
        if tif.is_ome and tif.ome_metadata:
            value = _ome_mpp(tif.ome_metadata)
            if value:
                return value
        page = tif.pages.first
        if tif.is_svs:
            found = re.search(r"MPP\s*=\s*([0-9.]+)", page.description)
            if found:
                return float(found.group(1))
        return _resolution_mpp(page)

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        array = self._levels[level]

        def region(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            index = tuple(
                slice(y0, y1) if ax == "Y" else slice(x0, x1) if ax == "X" else slice(None) if ax in "SC" else 0
                for ax in self._axes
            )
            return to_rgb_uint8(np.asarray(array[index]), str(self.path))

        return _clip_read(self, level, x, y, width, height, region)

    def close(self) -> None:
        self._store.close()
        self._tif.close()


class OpenSlideSlide(Slide):
    """Vendor pyramids (.svs, .ndpi, .mrxs, ...) and generic tiled TIFF through OpenSlide."""

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        import openslide  # the openslide-bin wheel provides the shared library

        self.path = Path(path)
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except Exception as exc:  # OpenSlideUnsupportedFormatError, OpenSlideError, OSError
            raise ImageReadError(f"cannot open slide {self.path} with OpenSlide: {exc}") from exc
        self.dimensions = [tuple(int(v) for v in d) for d in self._slide.level_dimensions]
        found = self._slide.properties.get("openslide.mpp-x")
        self.mpp = mpp if mpp is not None else (float(found) if found else None)

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        ds = self._slide.level_downsamples[level]

        def region(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            rgba = np.asarray(self._slide.read_region((round(x0 * ds), round(y0 * ds)), level, (x1 - x0, y1 - y0)))
            rgb = rgba[..., :3].copy()
            rgb[rgba[..., 3] == 0] = 255  # OpenSlide marks areas without data transparent: bare glass
            return rgb

        return _clip_read(self, level, x, y, width, height, region)

    def close(self) -> None:
        self._slide.close()


def open_slide(path: str | Path, reader: str = "auto", mpp: float | None = None) -> Slide:
    """Open a slide: `auto` reads TIFFs (OME or generic) with tifffile and every other format with OpenSlide."""
    path = Path(path)
    if reader not in READERS:
        raise ValueError(f"reader {reader!r} not in {READERS}")
    if not path.exists():
        raise ImageReadError(f"slide not found: {path}")
    if reader == "auto":
        reader = "tifffile" if path.suffix.lower() in TIFF_SUFFIXES else "openslide"
    return TiffSlide(path, mpp) if reader == "tifffile" else OpenSlideSlide(path, mpp)


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
    layout: str = "subifds",
    tile: int = 256,
    mask: bool = False,
    min_side: int = 1024,
    description: str | None = None,
) -> Path:
    """Write a tiled pyramidal TIFF from level-0 row strips (top to bottom, full width, any heights).

    RGB uint8 strips (h, w, 3) or 2-D uint8 masks (mask=True: 0/255, levels stay 0/255). `mpp` goes into the
    resolution tags (and OME PhysicalSizeX with layout "subifds"). Written to a temporary name first.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} not in {LAYOUTS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sizes = pyramid_sizes(height, width, min_side)
    tmp_path = path.with_name(path.name + ".tmp.tif")
    ome = layout == "subifds"
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".pyramid-") as scratch, tifffile.TiffWriter(
        tmp_path, bigtiff=True, ome=ome
    ) as tif:
        channels = () if mask else (3,)
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
                                         f"channels {channels or 'none (mask)'}")
                    expected[0] -= len(strip)
                    if expected[0] < 0 or (expected[0] > 0 and len(strip) < tile):
                        raise ValueError(f"level-0 strips gave {lh - expected[0]} rows; expected {lh}")
                    if sink is not None:  # halve pairs of rows; an odd last row is halved alone
                        rows = strip if carry is None else np.concatenate([carry, strip])
                        even = len(rows) - len(rows) % 2 if expected[0] else len(rows)
                        if even:
                            sink.write(np.ascontiguousarray(_halve(rows[:even], mask)).tobytes())
                        carry = rows[even:] if len(rows) > even else None
                    for x in range(0, strip.shape[1], tile):
                        yield np.ascontiguousarray(strip[:, x : x + tile])
                if expected[0] != 0:
                    raise ValueError(f"level-0 strips gave {lh - expected[0]} rows; expected {lh}")

            scale = 2**level
            options = dict(
                shape=(lh, lw, *channels), dtype=np.uint8, tile=(tile, tile), compression="zlib",
                photometric="minisblack" if mask else "rgb",
            )
            if mpp:
                options.update(resolution=(1e4 / (mpp * scale), 1e4 / (mpp * scale)), resolutionunit="CENTIMETER")
            if level == 0:
                extra: dict = {"subifds": len(sizes) - 1} if ome else {}
                if ome:
                    meta = {"axes": "YX" if mask else "YXS"}
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
    tmp_path.replace(path)
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
