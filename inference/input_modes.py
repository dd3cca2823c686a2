"""What the network sees of an RGB image: the image as is, its grey level, or its hematoxylin channel alone.

HPA images are DAB + hematoxylin, HuBMAP images H&E or PAS + hematoxylin: hematoxylin (nuclei) is the one stain
both domains share. "hematoxylin" separates it by colour deconvolution (Ruifrok & Johnston's stain vectors, as in
skimage.color.rgb2hed) and renders it alone as an RGB image, so DAB, eosin and PAS never reach the network;
"grey" keeps the luminance and drops every hue. The same function serves training (train.fastai_data) and
inference (inference.engine.predictor), and a checkpoint records its mode in config.json (`input_mode`), so a model
always predicts on what it trained on.
"""

from __future__ import annotations

import numpy as np
import torch

from inference.checkpoint import INPUT_MODES

# Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB) in RGB optical density, as in skimage.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as cv2.COLOR_RGB2GRAY


def check_mode(mode: str) -> str:
    """The mode itself, or a ValueError naming the choices."""
    if mode not in INPUT_MODES:
        raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {mode!r}")
    return mode


def project(batch: torch.Tensor, mode: str) -> torch.Tensor:
    """(N, 3k, H, W) RGB values in 0-255 (any dtype) -> float32 (N, 3k, H, W) in 0-255 as `mode` shows them.

    k > 1: several RGB views stacked on the channel axis (an MRN tile and its context view), each projected.
    """
    check_mode(mode)
    x = batch.float()
    if mode == "rgb":
        return x
    n, channels, h, w = x.shape
    if channels % 3:
        raise ValueError(f"input_mode {mode}: expected RGB views (3k channels), got {channels} channels")
    if channels > 3:
        return project(x.reshape(n * channels // 3, 3, h, w), mode).reshape(n, channels, h, w)
    if mode == "grey":
        weights = x.new_tensor(_LUMA).view(1, 3, 1, 1)
        return (x * weights).sum(1, keepdim=True).round().expand(-1, 3, -1, -1).contiguous()
    density = -torch.log((x + 1.0) / 256.0)  # optical density per channel, 0 for white
    hed = x.new_tensor(HED_FROM_RGB, dtype=torch.float32)
    haematoxylin = torch.einsum("nchw,c->nhw", density, hed[:, 0]).clamp(min=0)  # concentration of stain 0
    vector = x.new_tensor(RGB_FROM_HED[0], dtype=torch.float32).view(1, 3, 1, 1)
    # rounded to whole values: the Predictor's float tiles and the trainer's uint8 crops are the same numbers
    return (256.0 * torch.exp(-haematoxylin[:, None] * vector) - 1.0).clamp(0, 255).round()


def project_image(image: np.ndarray, mode: str) -> np.ndarray:
    """An (H, W, 3) uint8 RGB image as `mode` shows it, uint8 (training crops; the same arithmetic as project)."""
    if check_mode(mode) == "rgb":
        return image
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    out = project(tensor, mode)[0].to(torch.uint8).permute(1, 2, 0)
    return np.ascontiguousarray(out.numpy())
