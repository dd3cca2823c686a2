"""Reading competition TIFFs as (h, w, 3) uint8 RGB whatever their layout or bit depth.

Deeper than 8-bit samples are scaled by their bit depth, not shifted by 8 (a 12-bit image in a 16-bit
container would come out nearly black): the TIFF's BitsPerSample when it is below the container's width,
else the smallest even depth from 8 bits up that holds the image's real maximum (12-bit data -> / 4095).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import tifffile


class ImageReadError(RuntimeError):
    """An image file is missing, corrupt or has a layout we cannot turn into RGB."""


def effective_bits(top: float) -> int:
    """Smallest even bit depth from 8 up whose range holds `top` (4095 -> 12, 4096 -> 14, 65535 -> 16)."""
    bits = max(8, math.ceil(math.log2(max(float(top), 1.0) + 1.0)))
    return bits + (bits % 2)


def _scale_to_uint8(arr: np.ndarray, bits: int) -> np.ndarray:
    """Map [0, 2**bits - 1] to [0, 255], rounding to nearest (16-bit v * 257 maps back to v exactly)."""
    scaled = np.rint(np.clip(arr.astype(np.float64), 0, None) * (255.0 / (2.0**bits - 1.0)))
    return np.ascontiguousarray(np.clip(scaled, 0, 255).astype(np.uint8))


def to_rgb_uint8(arr: np.ndarray, name: str = "image", bits_per_sample: int | None = None) -> np.ndarray:
    """Convert HWC/CHW, grayscale, RGBA and 8/12/16-bit/float arrays to contiguous (h, w, 3) uint8.

    bits_per_sample (the TIFF tag) is used when it is below the array dtype's width; otherwise deeper
    integers are scaled by effective_bits of their maximum (see the module docstring).
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
        arr = np.repeat(arr[..., :1], 3, axis=-1)
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr.astype(np.uint8) * 255)
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = float(arr.max()) if arr.size else 0.0
        if top <= 1.0:  # [0, 1] floats
            return np.ascontiguousarray(np.rint(np.clip(arr, 0, 1) * 255.0).astype(np.uint8))
        if top <= 255.0:
            return np.ascontiguousarray(np.rint(np.clip(arr, 0, 255)).astype(np.uint8))
        return _scale_to_uint8(arr, effective_bits(top))
    if np.issubdtype(arr.dtype, np.integer):
        width = arr.dtype.itemsize * 8
        if bits_per_sample is not None and 8 <= bits_per_sample < width:
            return _scale_to_uint8(arr, bits_per_sample)
        top = int(arr.max()) if arr.size else 0
        if top <= 255:
            return np.ascontiguousarray(np.clip(arr, 0, 255).astype(np.uint8))
        return _scale_to_uint8(arr, effective_bits(top))
    raise ImageReadError(f"{name}: unsupported dtype {arr.dtype}")


def read_image(path: str | Path) -> np.ndarray:
    """Read a TIFF into (h, w, 3) uint8 RGB; raise ImageReadError naming the file on any failure."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image file not found: {path}")
    try:
        with tifffile.TiffFile(path) as tif:
            arr = tif.asarray()
            bits = tif.pages[0].bitspersample
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc
    return to_rgb_uint8(arr, name=str(path), bits_per_sample=int(bits) if bits else None)


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an (h, w, 3) uint8 image as a compressed TIFF, the competition's format."""
    tifffile.imwrite(path, image, photometric="rgb", compression="zlib")
