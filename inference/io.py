"""Reading competition TIFFs as (h, w, 3) uint8 RGB whatever their layout or bit depth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile


class ImageReadError(RuntimeError):
    """An image file is missing, corrupt or has a layout we cannot turn into RGB."""


def to_rgb_uint8(arr: np.ndarray, name: str = "image") -> np.ndarray:
    """Convert HWC/CHW, grayscale, RGBA and 8/16-bit/float arrays to contiguous (h, w, 3) uint8."""
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
    if arr.dtype == np.uint16:
        return np.ascontiguousarray((arr >> 8).astype(np.uint8))
    if np.issubdtype(arr.dtype, np.floating):
        scale = 255.0 if float(np.nanmax(arr)) <= 1.0 else 1.0
        return np.ascontiguousarray(np.clip(np.nan_to_num(arr) * scale, 0, 255).astype(np.uint8))
    if np.issubdtype(arr.dtype, np.integer):
        top = max(int(arr.max()), 1)
        if top <= 255:
            return np.ascontiguousarray(arr.astype(np.uint8))
        return np.ascontiguousarray((arr.astype(np.float64) * (255.0 / top)).astype(np.uint8))
    raise ImageReadError(f"{name}: unsupported dtype {arr.dtype}")


def read_image(path: str | Path) -> np.ndarray:
    """Read a TIFF into (h, w, 3) uint8 RGB; raise ImageReadError naming the file on any failure."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image file not found: {path}")
    try:
        arr = tifffile.imread(path)
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc
    return to_rgb_uint8(arr, name=str(path))


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an (h, w, 3) uint8 image as a compressed TIFF, the competition's format."""
    tifffile.imwrite(path, image, photometric="rgb", compression="zlib")
