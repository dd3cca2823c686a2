"""Strided sliding-window prediction with blending weights, reflection padding and flip TTA.

One image is cut into tile x tile windows (inference.tiling.window_starts: the last window is shifted
back to end at the border), windows run through the model in batches, and each window's output is
added into one accumulator with a weight map that fades towards the window border, so overlaps
blend without seams. Nothing is stacked: memory is one (channels, H, W) accumulator plus a batch.
An image smaller than a tile is padded by reflection up to one tile and never tiled. Given a
WindowFilter, windows without a True pixel of its map are not run and add no weight (whole slides skip
bare glass); pixels that no run window covers get probability 0.

The Gaussian weights are MONAI's (`monai.data.utils.compute_importance_map`, sigma = 0.125 * tile,
floor 1e-3), so benchmarks/sliding.py can check we agree with `sliding_window_inference`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from inference.tiling import context_window, window_starts

BLENDS = ("gaussian", "linear", "constant")
TTA_SIZES = (0, 2, 4, 8)

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class WindowFilter:
    """Which windows to run: a bool map over the image at any resolution; counts windows run and skipped."""

    keep: np.ndarray  # (h, w) bool, resized (nearest) to the image before use
    predicted: int = 0
    skipped: int = 0

    def select(self, starts: list[tuple[int, int]], height: int, width: int, tile: int,
               offset: tuple[int, int]) -> list[tuple[int, int]]:
        """The window starts (in a padded image, image at `offset`) that cover at least one kept pixel."""
        keep = cv2.resize(self.keep.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        integral = cv2.integral(keep)  # (h + 1, w + 1) sums: any() over a window in O(1)
        top, left = offset
        chosen = []
        for y, x in starts:
            y0, y1 = min(max(y - top, 0), height), min(max(y + tile - top, 0), height)
            x0, x1 = min(max(x - left, 0), width), min(max(x + tile - left, 0), width)
            if integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0] > 0:
                chosen.append((y, x))
        self.predicted += len(chosen)
        self.skipped += len(starts) - len(chosen)
        return chosen


def blend_weights(tile: int, mode: str = "gaussian", sigma_scale: float = 0.125) -> torch.Tensor:
    """(tile, tile) float32 weights: separable Gaussian or linear (pyramid) fall-off, or constant."""
    if mode not in BLENDS:
        raise ValueError(f"blend mode {mode!r} not in {BLENDS}")
    centre = (tile - 1) / 2.0
    x = torch.arange(tile, dtype=torch.float32) - centre
    if mode == "gaussian":
        line = torch.exp(x**2 / (-2 * (sigma_scale * tile) ** 2))
    elif mode == "linear":
        line = 1.0 - x.abs() / (tile / 2.0)
    else:
        line = torch.ones(tile)
    weights = line[:, None] * line[None, :]
    # A positive floor keeps every pixel covered by at least one window (corners of the image).
    return weights.clamp_(min=max(float(weights.min()), 1e-3))


def reflect_indices(length: int, before: int, after: int) -> np.ndarray:
    """Indices into [0, length) that pad an axis by symmetric reflection, repeated as often as needed."""
    idx = np.arange(-before, length + after) % (2 * length)
    return np.where(idx < length, idx, 2 * length - 1 - idx)


def pad_to_tile(image: torch.Tensor, tile: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad a (C, H, W) image, centred, so both sides are at least `tile`; return it and (top, left)."""
    _, h, w = image.shape
    dy, dx = max(tile - h, 0), max(tile - w, 0)
    if not dy and not dx:
        return image, (0, 0)
    top, left = dy // 2, dx // 2
    ys = torch.from_numpy(reflect_indices(h, top, dy - top))
    xs = torch.from_numpy(reflect_indices(w, left, dx - left))
    return image.index_select(1, ys).index_select(2, xs), (top, left)


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th (0..7) of the 8 flips/transposes of the last two axes."""
    if k & 4:
        x = x.transpose(-1, -2)
    if k & 1:
        x = x.flip(-1)
    if k & 2:
        x = x.flip(-2)
    return x


def inverse_dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Undo dihedral(x, k)."""
    if k & 2:
        x = x.flip(-2)
    if k & 1:
        x = x.flip(-1)
    if k & 4:
        x = x.transpose(-1, -2)
    return x


def tta_forward(forward: Forward, batch: torch.Tensor, tta: int = 0) -> torch.Tensor:
    """Mean of forward() over 0 (identity), 2 (h-flip), 4 (h/v flips) or 8 (dihedral) views, mapped back."""
    if tta not in TTA_SIZES:
        raise ValueError(f"tta must be one of {TTA_SIZES}, got {tta}")
    views = max(tta, 1)
    out = forward(batch)
    for k in range(1, views):
        out = out + inverse_dihedral(forward(dihedral(batch, k)), k)
    return out / views if views > 1 else out


def sliding_window(
    image: torch.Tensor,
    forward: Forward,
    tile: int,
    stride: int,
    out_channels: int,
    batch_size: int = 4,
    weights: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    windows: WindowFilter | None = None,
    context: int = 1,
) -> torch.Tensor:
    """Blend forward() over strided windows of a (C, H, W) image into (out_channels, H, W) float32 on CPU.

    forward takes an (N, C, tile, tile) batch on `device` (same dtype as `image`) and returns
    (N, out_channels, tile, tile) probabilities; `weights` defaults to blend_weights(tile, "gaussian");
    `windows` (optional) runs only the windows over its kept pixels. With context k > 1 (MRN checkpoints) each
    window goes to forward() with a second view appended as channels: the k * tile square centred on the
    window (reflection beyond the image), area-shrunk to tile x tile.
    """
    if image.ndim != 3:
        raise ValueError(f"sliding_window expects a (C, H, W) image, got shape {tuple(image.shape)}")
    device = torch.device(device)
    _, h, w = image.shape
    padded, (top, left) = pad_to_tile(image, tile)
    padded = padded.to(device)  # the working image is small: one copy instead of one per batch
    ph, pw = padded.shape[1:]
    weights = (blend_weights(tile) if weights is None else weights).to(device=device, dtype=torch.float32)
    acc = torch.zeros((out_channels, ph, pw), dtype=torch.float32, device=device)
    wsum = torch.zeros((ph, pw), dtype=torch.float32, device=device)
    starts = [(y, x) for y in window_starts(ph, tile, stride) for x in window_starts(pw, tile, stride)]
    if windows is not None:
        starts = windows.select(starts, h, w, tile, (top, left))
    if context > 1:
        top_m, _, span = context_window(0, 0, tile, context)  # window (y, x) -> view rows y + top_m ... + span
        ys, xs = (torch.from_numpy(reflect_indices(n, -top_m, span)).to(device) for n in (ph, pw))
        wide = padded.index_select(1, ys).index_select(2, xs)
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        batch = torch.stack([padded[:, y : y + tile, x : x + tile] for y, x in chunk])
        if context > 1:
            views = torch.stack([wide[:, y : y + span, x : x + span] for y, x in chunk])
            small = torch.nn.functional.avg_pool2d(views.float(), context).round().to(batch.dtype)
            batch = torch.cat([batch, small], 1)
        out = forward(batch)
        if out.shape[1:] != (out_channels, tile, tile):
            raise ValueError(
                f"model output {tuple(out.shape)} for a {tuple(batch.shape)} batch; "
                f"expected (N, {out_channels}, {tile}, {tile})"
            )
        out = out.float() * weights
        for (y, x), o in zip(chunk, out, strict=True):
            acc[:, y : y + tile, x : x + tile] += o
            wsum[y : y + tile, x : x + tile] += weights
    acc /= wsum.clamp_(min=1e-12) if windows is not None else wsum  # skipped-only pixels: 0 / tiny = 0
    return acc[:, top : top + h, left : left + w].cpu()
