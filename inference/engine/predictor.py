"""The Predictor: one checkpoint's network with its tile size, normalisation, activation and scale rule.

A Predictor rescales the image to the model's working scale (--scale-mode), runs inference.engine.sliding over it
and returns probabilities either at that working scale (what the ensemble accumulates) or resized back to the
image's full resolution. load_predictor reads a checkpoint folder through inference.engine.models.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from inference.checkpoint import CheckpointConfig
from inference.engine.models import build_model, resolve_device
from inference.engine.sliding import BLENDS, WindowFilter, blend_weights, sliding_window, tta_forward
from inference.input_modes import project
from inference.tiling import adaptive_reduce, resize_image, resize_probs, scaled_size, stride_for

SCALE_MODES = ("pixel-size", "reduce", "none")
DEFAULT_SCALE_MODE = "pixel-size"
# Working-side cap in pixels. The trainers' checkpoints work at about 0.52 um/px (768 px tiles of 3x3 splits of
# 3000 px HPA images), where a 3000 px HPA image is 2304 px: the cap allows 2x that side (4x the windows) before
# it binds, so a huge HuBMAP image costs at most 4x a typical one instead of 200x (4500 px at 6.263 um/px would
# be 54000 px), and --time-budget absorbs the rest.
DEFAULT_MAX_SIDE = 4608


@dataclass(frozen=True)
class Scale:
    """How one checkpoint resamples one image: the working (h, w), the factor, the rule used, whether capped."""

    size: tuple[int, int]
    factor: float
    rule: str
    capped: bool = False


class Predictor:
    """One checkpoint's model with everything needed to turn an image into class probabilities."""

    def __init__(
        self,
        config: CheckpointConfig,
        model: torch.nn.Module,
        device: torch.device | str = "cpu",
        batch_size: int = 4,
        blend: str = "gaussian",
        name: str = "",
    ) -> None:
        if blend not in BLENDS:
            raise ValueError(f"blend {blend!r} not in {BLENDS}")
        self.config = config
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.model = model.to(memory_format=torch.channels_last) if self.cuda else model
        self.batch_size = batch_size
        self.name = name or f"{config.name}/fold{config.fold}"
        self.weights = blend_weights(config.tile_size, blend).to(self.device)
        self.stride = stride_for(config.tile_size, config.overlap)
        views = 2 if config.context > 1 else 1  # MRN: fine tile + context view, normalised alike
        self._mean = torch.tensor(config.mean * views, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) * 255.0
        self._std = torch.tensor(config.std * views, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) * 255.0

    @property
    def channels(self) -> int:
        """Number of output probability maps (1 for binary, 6 for multiclass)."""
        return len(self.config.classes)

    @property
    def multiclass(self) -> bool:
        return self.config.task == "multiclass"

    def scale(
        self,
        height: int,
        width: int,
        scale_mode: str = DEFAULT_SCALE_MODE,
        pixel_size: float | None = None,
        max_side: int | None = DEFAULT_MAX_SIDE,
        coarsen: float = 1.0,
    ) -> Scale:
        """How an image is resampled before tiling, per --scale-mode, then times coarsen, then capped at max_side.

        pixel-size: factor = image um/px / checkpoint um/px (fractional, no 2x jumps); pixel_size None means
        no rescaling (the caller found no usable value, see image_pixel_size); a checkpoint without pixel_size
        falls back to the reduce rule. reduce: 1 / (config reduce or ceil(max(h, w) / (tile * reduce_k))).
        """
        if scale_mode not in SCALE_MODES:
            raise ValueError(f"scale mode {scale_mode!r} not in {SCALE_MODES}")
        rule = scale_mode
        if scale_mode == "pixel-size" and self.config.pixel_size is None:
            rule = "reduce"
        if rule == "none":
            factor = 1.0
        elif rule == "reduce":
            cfg = self.config
            factor = 1.0 / (cfg.reduce or adaptive_reduce(height, width, cfg.tile_size, cfg.reduce_k))
        elif pixel_size is None:
            factor = 1.0
        else:
            if not pixel_size > 0:
                raise ValueError(f"--scale-mode pixel-size needs a positive pixel_size, got {pixel_size}")
            factor = float(pixel_size) / self.config.pixel_size
        factor *= coarsen
        capped = max_side is not None and max(height, width) * factor > max_side
        if capped:
            factor = max_side / max(height, width)
        return Scale(scaled_size(height, width, factor), factor, rule, capped)

    def working_size(
        self,
        height: int,
        width: int,
        scale_mode: str = DEFAULT_SCALE_MODE,
        pixel_size: float | None = None,
        max_side: int | None = DEFAULT_MAX_SIDE,
    ) -> tuple[int, int]:
        """(h, w) the image is resampled to before tiling, per --scale-mode (see scale)."""
        return self.scale(height, width, scale_mode, pixel_size, max_side).size

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, t, t) tiles -> float32 probabilities (N, C, t, t)."""
        x = (project(batch, self.config.input_mode) - self._mean) / self._std
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = torch.autocast("cuda", dtype=torch.float16) if self.cuda else nullcontext()
        with amp:
            logits = self.model(x)
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"{self.name}: model returned {type(logits).__name__}; expected a logits tensor")
        if logits.shape[1] != self.channels:
            raise ValueError(
                f"{self.name}: model gives {logits.shape[1]} channel(s) but config.json lists "
                f"{self.channels} class(es) {self.config.classes}"
            )
        logits = logits.float()
        return logits.softmax(1) if self.multiclass else logits.sigmoid()

    @torch.inference_mode()
    def predict_working(
        self, image: np.ndarray, size: tuple[int, int], tta: int = 0, windows: WindowFilter | None = None
    ) -> np.ndarray:
        """(C, h, w) float32 probabilities of an (H, W, 3) uint8 image resampled to size=(h, w).

        `windows` runs only the sliding windows over its kept pixels (see inference.engine.sliding.WindowFilter).
        """
        working = resize_image(image, *size)
        tensor = torch.from_numpy(np.ascontiguousarray(working)).permute(2, 0, 1)
        probs = sliding_window(
            tensor,
            lambda b: tta_forward(self._forward, b, tta),
            tile=self.config.tile_size,
            stride=self.stride,
            out_channels=self.channels,
            batch_size=self.batch_size,
            weights=self.weights,
            device=self.device,
            windows=windows,
            context=self.config.context,
        )
        return np.ascontiguousarray(probs.numpy())

    def __call__(
        self,
        image: np.ndarray,
        scale_mode: str = DEFAULT_SCALE_MODE,
        pixel_size: float | None = None,
        tta: int = 0,
        max_side: int | None = DEFAULT_MAX_SIDE,
    ) -> np.ndarray:
        """(C, H, W) float32 probabilities at the image's full resolution."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{self.name}: expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
        h, w = image.shape[:2]
        probs = self.predict_working(image, self.working_size(h, w, scale_mode, pixel_size, max_side), tta)
        return resize_probs(probs, h, w)


def load_predictor(
    folder: str | Path, device: str | torch.device = "cpu", batch_size: int = 4, blend: str = "gaussian"
) -> Predictor:
    """Read config.json + weights of one checkpoint folder into a Predictor on `device`."""
    folder = Path(folder)
    config = CheckpointConfig.load(folder)
    device = resolve_device(device) if isinstance(device, str) else device
    model = build_model(config, folder, device)
    return Predictor(config, model, device, batch_size=batch_size, blend=blend, name=str(folder))
