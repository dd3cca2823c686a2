"""Reading competition TIFFs as (h, w, 3) uint8 RGB whatever their layout, compression, colour model or bit depth.

Deeper than 8-bit samples are scaled by their bit depth, not shifted by 8 (a 12-bit image in a 16-bit
container would come out nearly black): the TIFF's BitsPerSample when it is below the container's width,
else the smallest even depth from 8 bits up that holds the image's real maximum (12-bit data -> / 4095).

Decoding: tifffile with imagecodecs (pinned: LZW, JPEG, JPEG 2000, ZSTD, WebP tiles, as libvips, QuPath and
scanners write them); when tifffile cannot decode a file, Pillow, then OpenCV, are tried, and the fallback is
reported in `notes`. Colour models become RGB: palette through the colour map, CMYK (separated, inkset CMYK) by
R = (1 - C)(1 - K) and so on, uncompressed YCbCr by the JPEG (BT.601 full range) matrix, min-is-white inverted;
any other photometric is read as its samples with a note.

Bounded by bytes, not only by side: only page 0 of the first series' full-resolution level is decoded (a
64-page TIFF costs one page; three or four single-sample pages of one shape are read together, as the
channels of a channel-first image written page by page). Before any pixel is decoded (TIFF tags, Pillow's
header), a side over max_side (default MAX_IMAGE_SIDE) or decoded bytes (pages x height x width x samples x
bytes per sample) over max_bytes (default image_byte_cap(max_side): a 16-bit RGB image at the side cap) is an
ImageTooLarge error, so a small file that declares a huge image (a TIFF bomb) costs nothing. Conversion to
uint8 goes by row chunks of CHUNK_SAMPLES samples in integer arithmetic (floats: float64 per chunk only), so
its temporaries stay about a MiB whatever the image size.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import tifffile

MAX_IMAGE_SIDE = 30000  # px; the hidden test's largest images are 4500 px, whole slides go through inference.wsi
CHUNK_SAMPLES = 1 << 16  # samples converted at a time (a float64 temporary of 512 KiB)


class ImageReadError(RuntimeError):
    """An image file is missing, corrupt or has a layout we cannot turn into RGB."""


class ImageTooLarge(ImageReadError):
    """An image declares a side or a decoded size beyond the reader's caps (refused before decoding)."""


def effective_bits(top: float) -> int:
    """Smallest even bit depth from 8 up whose range holds `top` (4095 -> 12, 4096 -> 14, 65535 -> 16)."""
    bits = max(8, math.ceil(math.log2(max(float(top), 1.0) + 1.0)))
    return bits + (bits % 2)


def image_byte_cap(max_side: int | None) -> int | None:
    """Decoded bytes allowed under a side cap: those of a 16-bit RGB image at that side (None: no cap)."""
    return None if max_side is None else int(max_side) ** 2 * 3 * 2


def _row_chunks(arr: np.ndarray) -> Iterator[slice]:
    """Row slices of about CHUNK_SAMPLES samples each."""
    step = max(1, CHUNK_SAMPLES // max(1, math.prod(arr.shape[1:])))
    for y in range(0, arr.shape[0], step):
        yield slice(y, y + step)


def _convert_rows(arr: np.ndarray, convert: Callable[[np.ndarray], np.ndarray], channels: int | None = None
                  ) -> np.ndarray:
    """A new contiguous uint8 array of convert(chunk) over row chunks of arr (temporaries stay chunk-sized)."""
    out = np.empty(arr.shape if channels is None else (*arr.shape[:-1], channels), np.uint8)
    for rows in _row_chunks(arr):
        out[rows] = convert(arr[rows])
    return out


def _scale_to_uint8(arr: np.ndarray, bits: int) -> np.ndarray:
    """Map integers in [0, 2**bits - 1] to [0, 255], rounding to nearest, in integer arithmetic by row chunks.

    round(v * 255 / top) is (v * 255 + top // 2) // top in uint32: top = 2**bits - 1 is odd, so no value lies
    half-way and the result equals float rounding (16-bit v * 257 maps back to v exactly). Depths over 16 bits
    are first shifted down to 16.
    """
    top = (1 << bits) - 1
    shift = max(0, bits - 16)
    high = min(top, int(np.iinfo(arr.dtype).max))
    divisor = top >> shift

    def convert(chunk: np.ndarray) -> np.ndarray:
        values = np.clip(chunk, 0, high)
        if shift:
            values >>= shift
        values = values.astype(np.uint32, copy=False)
        values *= 255
        values += divisor // 2
        values //= divisor
        return values

    return _convert_rows(arr, convert)


def _finite(chunk: np.ndarray) -> np.ndarray:
    """A float64 copy of a chunk with NaN and infinities as 0."""
    return np.nan_to_num(chunk.astype(np.float64), copy=False, nan=0.0, posinf=0.0, neginf=0.0)


def _float_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Floats to uint8 (NaN, infinities as 0): [0, 1] times 255, [0, 255] as is, deeper by effective_bits."""
    top = max((float(_finite(arr[rows]).max()) for rows in _row_chunks(arr) if arr[rows].size), default=0.0)
    if top <= 1.0:  # [0, 1] floats
        high, scale = 1.0, 255.0
    elif top <= 255.0:
        high, scale = 255.0, 1.0
    else:
        high, scale = None, 255.0 / (2.0 ** effective_bits(top) - 1.0)

    def convert(chunk: np.ndarray) -> np.ndarray:
        values = _finite(chunk)  # the one float64 temporary, chunk-sized, worked on in place
        np.clip(values, 0.0, high, out=values)
        values *= scale
        np.rint(values, out=values)
        return np.clip(values, 0.0, 255.0, out=values)

    return _convert_rows(arr, convert)


def to_rgb_uint8(arr: np.ndarray, name: str = "image", bits_per_sample: int | None = None) -> np.ndarray:
    """Convert HWC/CHW, grayscale, RGBA and 8/12/16-bit/float arrays to contiguous (h, w, 3) uint8.

    bits_per_sample (the TIFF tag) is used when it is below the array dtype's width; otherwise deeper
    integers are scaled by effective_bits of their maximum (see the module docstring). Deeper and float input
    is converted by row chunks: no full-size float64 or widened copy is made.
    """
    while arr.ndim > 3 and arr.shape[0] == 1:  # (1, h, w, c) pages/series; never squeeze h or w (1x1 images)
        arr = arr[0]
    if arr.ndim > 3:
        arr = np.squeeze(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    elif arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise ImageReadError(f"{name}: cannot interpret array of shape {arr.shape} as an image")
    if arr.shape[-1] in (1, 2):  # grayscale, optionally with alpha
        arr = np.broadcast_to(arr[..., :1], (*arr.shape[:2], 3))  # a view: the conversion writes the copy
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return _convert_rows(arr, lambda c: c.astype(np.uint8) * 255)
    if np.issubdtype(arr.dtype, np.floating):
        return _float_to_uint8(arr)
    if np.issubdtype(arr.dtype, np.integer):
        width = arr.dtype.itemsize * 8
        if bits_per_sample is not None and 8 <= bits_per_sample < width:
            return _scale_to_uint8(arr, bits_per_sample)
        top = int(arr.max()) if arr.size else 0
        if top <= 255:
            return _convert_rows(arr, lambda c: np.clip(c, 0, 255))
        return _scale_to_uint8(arr, effective_bits(top))
    raise ImageReadError(f"{name}: unsupported dtype {arr.dtype}")


def check_side(height: int, width: int, max_side: int | None, name: str) -> None:
    """Raise ImageTooLarge when either side exceeds max_side (None: no cap)."""
    if max_side is not None and max(height, width) > max_side:
        raise ImageTooLarge(f"{name}: {width}x{height} px exceeds the {max_side} px cap (--max-image-side): "
                            "not decoded")


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"


def check_bytes(nbytes: int, max_bytes: int | None, name: str, what: str) -> None:
    """Raise ImageTooLarge when decoding `what` would allocate over max_bytes (None: no cap)."""
    if max_bytes is not None and nbytes > max_bytes:
        raise ImageTooLarge(f"{name}: {what} decode to {_size(nbytes)}, over the {_size(max_bytes)} cap (a 16-bit "
                            "RGB image at --max-image-side): not decoded")


def _photometric_to_rgb(arr: np.ndarray, page: tifffile.TiffPage, name: str, notes: list[str]) -> np.ndarray:
    """Palette, CMYK, YCbCr and min-is-white samples as RGB (see the module docstring)."""
    kind = tifffile.PHOTOMETRIC
    photometric = page.photometric
    if photometric == kind.PALETTE and page.colormap is not None:
        colormap = np.asarray(page.colormap)
        scale = 257.0 if colormap.max() > 255 else 1.0  # 16-bit entries, as the TIFF standard says
        lut = np.rint(colormap.astype(np.float64) / scale).clip(0, 255).astype(np.uint8).T  # (entries, 3)
        index = arr if arr.ndim == 2 else arr[..., 0]
        return _convert_rows(index[..., None], lambda c: lut[np.clip(c[..., 0], 0, len(lut) - 1)], channels=3)
    if photometric == kind.SEPARATED:
        inkset = page.tags.valueof(332, 1)  # InkSet: 1 = CMYK
        if inkset != 1 or arr.shape[-1] < 4:
            notes.append(f"{name}: separated colour with InkSet {inkset} and {arr.shape[-1]} ink(s) is not CMYK: "
                         "read as its samples, colours may be wrong")
            return arr
        if np.issubdtype(arr.dtype, np.floating):
            arr = _float_to_uint8(arr[..., :4])  # inks in [0, 1]
        elif not (np.issubdtype(arr.dtype, np.unsignedinteger) and arr.dtype.itemsize <= 2):
            arr = _scale_to_uint8(arr[..., :4], np.iinfo(arr.dtype).bits - np.issubdtype(arr.dtype, np.signedinteger))
        top = int(np.iinfo(arr.dtype).max)

        def cmyk(chunk: np.ndarray) -> np.ndarray:  # round(255 (top - C)(top - K) / top^2), in integers
            inks = chunk[..., :4].astype(np.uint64)
            return ((top - inks[..., :3]) * (top - inks[..., 3:4]) * 255 + top * top // 2) // (top * top)

        return _convert_rows(arr, cmyk, channels=3)
    if photometric == kind.YCBCR and page.compression not in (tifffile.COMPRESSION.JPEG, tifffile.COMPRESSION.OJPEG):
        ycc = to_rgb_uint8(arr, name)  # JPEG-compressed YCbCr is decoded to RGB by the codec already
        return cv2.cvtColor(np.ascontiguousarray(ycc[..., [0, 2, 1]]), cv2.COLOR_YCrCb2RGB)
    if photometric == kind.MINISWHITE and np.issubdtype(arr.dtype, np.integer):
        top = 2 ** int(page.bitspersample) - 1 if page.bitspersample else np.iinfo(arr.dtype).max
        top = arr.dtype.type(min(top, np.iinfo(arr.dtype).max))
        return np.subtract(top, arr, out=arr) if arr.flags.writeable else top - arr  # decoded for us: in place
    if photometric not in (kind.RGB, kind.MINISBLACK, kind.YCBCR, kind.PALETTE):
        notes.append(f"{name}: photometric {kind(photometric).name} is read as its samples, colours may be wrong")
    return arr


def _first_image(tif: tifffile.TiffFile) -> list[tifffile.TiffPage | tifffile.TiffFrame]:
    """The pages to decode: page 0 of the first series' full-resolution level, or all of its pages when it has
    3 or 4 single-sample pages of one shape (a channel-first image written page by page)."""
    series = tif.series[0]
    level = series.levels[0] if series.levels else series
    pages = list(level.pages)
    first = pages[0] if pages and pages[0] is not None else tif.pages.first
    key = first.keyframe
    if 3 <= len(pages) <= 4 and key.samplesperpixel == 1 and all(
        p is not None and p.keyframe.shape == key.shape and p.keyframe.dtype == key.dtype for p in pages
    ):
        return pages
    return [first]


def _read_tifffile(path: Path, max_side: int | None, max_bytes: int | None, notes: list[str]) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        pages = _first_image(tif)
        page = pages[0].keyframe
        check_side(int(page.imagelength), int(page.imagewidth), max_side, str(path))
        check_bytes(len(pages) * math.prod(page.shape) * page.dtype.itemsize, max_bytes, str(path),
                    f"{len(pages)} page(s) of {page.imagewidth}x{page.imagelength} px x {page.samplesperpixel} "
                    f"sample(s) of {page.dtype}")
        arr = pages[0].asarray() if len(pages) == 1 else np.stack([p.asarray() for p in pages])
        bits = page.bitspersample
        arr = _photometric_to_rgb(arr, page, str(path), notes)
    if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[-1] == 3:
        return np.ascontiguousarray(arr)
    return to_rgb_uint8(arr, name=str(path), bits_per_sample=int(bits) if bits else None)


_PILLOW_BAND_BYTES = {"I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}


def _read_pillow(path: Path, max_side: int | None, max_bytes: int | None) -> np.ndarray:
    from PIL import Image  # Pillow ships with torchvision; only needed for files tifffile cannot decode

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Corrupt EXIF data" and the like: the outcome is reported by the caller
        with Image.open(path) as im:  # frame 0 only
            width, height = im.size  # from the header: nothing decoded yet
            check_side(height, width, max_side, str(path))
            check_bytes(width * height * len(im.getbands()) * _PILLOW_BAND_BYTES.get(im.mode, 1), max_bytes,
                        str(path), f"{width}x{height} px in mode {im.mode}")
            Image.MAX_IMAGE_PIXELS = None  # our own caps above apply instead
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "1", "L", "LA", "RGBA", "HSV"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    return to_rgb_uint8(arr, name=str(path))


def _read_opencv(path: Path, max_side: int | None, max_bytes: int | None) -> np.ndarray:
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # page 0; OpenCV's own pixel limit guards its decoder
    if arr is None:
        raise ImageReadError(f"OpenCV cannot decode {path}")
    check_side(arr.shape[0], arr.shape[1], max_side, str(path))
    check_bytes(arr.nbytes, max_bytes, str(path), f"{arr.shape} samples of {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] >= 3:
        arr = arr[..., [2, 1, 0]] if arr.shape[-1] == 3 else arr[..., [2, 1, 0, 3]]
    return to_rgb_uint8(arr, name=str(path))


def read_image(path: str | Path, max_side: int | None = MAX_IMAGE_SIDE, notes: list[str] | None = None,
               max_bytes: int | None = None) -> np.ndarray:
    """Read a TIFF into (h, w, 3) uint8 RGB; raise ImageReadError naming the file on any failure.

    max_side: refuse (ImageTooLarge) an image whose declared side exceeds it, before decoding (None: no cap).
    max_bytes: refuse one whose decoded pixels would take more bytes (None: image_byte_cap(max_side)).
    notes: filled with what the reader had to do (a fallback decoder, an unusual colour model).
    """
    path = Path(path)
    notes = [] if notes is None else notes
    max_bytes = image_byte_cap(max_side) if max_bytes is None else max_bytes
    if not path.is_file():
        raise ImageReadError(f"image file not found: {path}")
    errors = []
    for reader in ("tifffile", "Pillow", "OpenCV"):
        try:
            if reader == "tifffile":
                return _read_tifffile(path, max_side, max_bytes, notes)
            image = (_read_pillow if reader == "Pillow" else _read_opencv)(path, max_side, max_bytes)
        except ImageTooLarge:
            raise
        except Exception as exc:  # every decoder raises its own types for corrupt files
            errors.append(f"{reader}: {type(exc).__name__}: {exc}")
            continue
        notes.append(f"tifffile could not decode {path.name} ({errors[0]}); read with {reader}")
        return image
    raise ImageReadError(f"cannot read image {path}: {'; '.join(errors)}")


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an (h, w, 3) uint8 image as a compressed TIFF, the competition's format."""
    tifffile.imwrite(path, image, photometric="rgb", compression="zlib")
