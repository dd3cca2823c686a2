"""Load a checkpoint folder into a Predictor: RGB uint8 image in, per-class probabilities out.

A Predictor knows its model's tile size, normalisation, output activation and scale rule; it
rescales the image to the model's working scale (--scale-mode), runs inference.sliding over it and
returns probabilities either at that working scale (what the ensemble accumulates) or resized back
to the image's full resolution. Loading only reads files: smp models are built with
encoder_weights=None and filled from model.pth, TorchScript models come from model.ts.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from pathlib import Path

import cv2
import numpy as np
import torch

from inference.checkpoint import CheckpointConfig
from inference.sliding import BLENDS, WindowFilter, blend_weights, sliding_window, tta_forward
from inference.tiling import adaptive_reduce, resize_image, stride_for

SCALE_MODES = ("reduce", "pixel-size", "none")


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is an error naming the fix."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} asked for but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(device)


def resolve_checkpoints(path: str | Path) -> list[Path]:
    """A checkpoint folder (has config.json) -> [it]; a run folder -> its fold*/ checkpoint folders, sorted."""
    path = Path(path)
    if (path / "config.json").is_file():
        return [path]
    folds = sorted(p.parent for p in path.glob("fold*/config.json"))
    if not folds:
        raise FileNotFoundError(
            f"{path} is neither a checkpoint folder (config.json) nor a run folder with fold*/config.json"
        )
    return folds


def resize_probs(probs: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of (C, h, w) float maps to (C, height, width) float32."""
    if probs.shape[1:] == (height, width):
        return probs.astype(np.float32, copy=False)
    planes = [
        cv2.resize(np.ascontiguousarray(plane, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        for plane in probs
    ]
    return planes[0][None] if len(planes) == 1 else np.stack(planes)


def build_model(config: CheckpointConfig, folder: Path, device: torch.device) -> torch.nn.Module:
    """Instantiate the network of a checkpoint folder and load its weights (no network access)."""
    path = folder / config.weights
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; config.json names weights={config.weights!r}")
    if config.framework == "torchscript":
        with warnings.catch_warnings():  # torch marks jit deprecated; the checkpoint contract uses it on purpose
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location=device).eval()
    import segmentation_models_pytorch as smp  # imported here: TorchScript-only kernels do not need it

    model = smp.create_model(
        config.arch, encoder_name=config.encoder, encoder_weights=None, in_channels=3, classes=len(config.classes)
    )
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RuntimeError(
            f"{path}: weights do not fit smp {config.arch}/{config.encoder} with {len(config.classes)} class(es); "
            f"check arch/encoder/classes in {folder / 'config.json'}\n{exc}"
        ) from exc
    return model.to(device).eval()


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

    def working_size(
        self, height: int, width: int, scale_mode: str = "reduce", pixel_size: float | None = None
    ) -> tuple[int, int]:
        """(h, w) the image is resampled to before tiling, per --scale-mode."""
        if scale_mode not in SCALE_MODES:
            raise ValueError(f"scale mode {scale_mode!r} not in {SCALE_MODES}")
        if scale_mode == "none":
            return height, width
        if scale_mode == "reduce":
            cfg = self.config
            reduce = cfg.reduce or adaptive_reduce(height, width, cfg.tile_size, cfg.reduce_k)
            factor = 1.0 / reduce
        else:
            if self.config.pixel_size is None:
                raise ValueError(
                    f"{self.name}: --scale-mode pixel-size needs pixel_size in config.json; "
                    "use --scale-mode reduce for this checkpoint"
                )
            if pixel_size is None or not pixel_size > 0:
                raise ValueError(f"--scale-mode pixel-size needs the image's pixel_size, got {pixel_size}")
            factor = pixel_size / self.config.pixel_size
        return max(1, round(height * factor)), max(1, round(width * factor))

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, t, t) tiles -> float32 probabilities (N, C, t, t)."""
        x = (batch.float() - self._mean) / self._std
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

        `windows` runs only the sliding windows over its kept pixels (see inference.sliding.WindowFilter).
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
        self, image: np.ndarray, scale_mode: str = "reduce", pixel_size: float | None = None, tta: int = 0
    ) -> np.ndarray:
        """(C, H, W) float32 probabilities at the image's full resolution."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{self.name}: expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
        h, w = image.shape[:2]
        probs = self.predict_working(image, self.working_size(h, w, scale_mode, pixel_size), tta)
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
