"""Load a checkpoint folder into a Predictor: RGB uint8 image in, per-class probabilities out.

A Predictor knows its model's tile size, normalisation, output activation and scale rule; it
rescales the image to the model's working scale (--scale-mode), runs inference.sliding over it and
returns probabilities either at that working scale (what the ensemble accumulates) or resized back
to the image's full resolution. Loading only reads files: smp models are built with
encoder_weights=None and filled from model.pth, TorchScript models come from model.ts.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from inference.checkpoint import CheckpointConfig
from inference.organs import DATA_SOURCES, ORGAN_TABLE
from inference.sliding import BLENDS, WindowFilter, blend_weights, sliding_window, tta_forward
from inference.tiling import adaptive_reduce, resize_image, stride_for

log = logging.getLogger("inference.predictor")

SCALE_MODES = ("pixel-size", "reduce", "none")
DEFAULT_SCALE_MODE = "pixel-size"
# A CSV pixel_size outside this range (um/px) is treated as missing: the competition's span is 0.229 to 6.263.
PIXEL_SIZE_RANGE = (0.05, 50.0)
# Working-side cap in pixels. The trainers' checkpoints work at about 0.52 um/px (768 px tiles of 3x3 splits of
# 3000 px HPA images), where a 3000 px HPA image is 2304 px: the cap allows 2x that side (4x the windows) before
# it binds, so a huge HuBMAP image costs at most 4x a typical one instead of 200x (4500 px at 6.263 um/px would
# be 54000 px), and --time-budget absorbs the rest.
DEFAULT_MAX_SIDE = 4608
TORCH_VERSION_SUFFIX = ".torch_version"  # side file next to a TorchScript file: the torch it was traced with


def valid_pixel_size(value: object) -> bool:
    """A usable um/px value: a finite number inside PIXEL_SIZE_RANGE."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(value) and PIXEL_SIZE_RANGE[0] <= value <= PIXEL_SIZE_RANGE[1]


def image_pixel_size(pixel_size: object, organ: str, data_source: str | None = None) -> tuple[float | None, str]:
    """The um/px to rescale an image from, and a note saying which fallback replaced the CSV value ('' if none).

    Missing, NaN, <= 0 or absurd values fall back to the organ's pixel size for the data source (unknown
    source: Hubmap, the private leaderboard's); an unknown organ gives None, i.e. no rescaling (factor 1).
    """
    if valid_pixel_size(pixel_size):
        return float(pixel_size), ""
    lo, hi = PIXEL_SIZE_RANGE
    what = "missing" if pixel_size is None or pixel_size != pixel_size else f"{pixel_size} outside [{lo:g}, {hi:g}]"
    if organ not in ORGAN_TABLE:
        return None, f"pixel_size {what} and organ {organ!r} unknown: not rescaled by pixel size (factor 1)"
    source = data_source if data_source in DATA_SOURCES else "Hubmap"
    value = ORGAN_TABLE[organ].pixel_size[source]
    unknown = "" if data_source in DATA_SOURCES else f" (data_source {data_source!r} unknown)"
    return value, f"pixel_size {what}: using the {organ} {source} value {value} um/px{unknown}"


@dataclass(frozen=True)
class Scale:
    """How one checkpoint resamples one image: the working (h, w), the factor, the rule used, whether capped."""

    size: tuple[int, int]
    factor: float
    rule: str
    capped: bool = False


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
    """(C, h, w) float maps to (C, height, width) float32: area averaging when shrinking (no aliasing), else bilinear."""
    if probs.shape[1:] == (height, width):
        return probs.astype(np.float32, copy=False)
    planes = [resize_image(np.ascontiguousarray(plane, dtype=np.float32), height, width) for plane in probs]
    return planes[0][None] if len(planes) == 1 else np.stack(planes)


def smp_model(
    arch: str, encoder: str, classes: int, decoder_norm: str = "batchnorm", encoder_weights: str | None = None
) -> torch.nn.Module:
    """smp.create_model with the decoder normalisation a checkpoint records (the one place both sides build it).

    decoder_norm: smp's own decoder_use_norm values ("batchnorm", "instancenorm", "identity"), or "groupnorm":
    smp's BatchNorm decoder with every BatchNorm2d replaced by GroupNorm (32 groups or fewer), which does not
    depend on the batch size.
    """
    import segmentation_models_pytorch as smp  # imported here: TorchScript-only kernels do not need it

    extra = {} if decoder_norm in ("batchnorm", "groupnorm") else {"decoder_use_norm": decoder_norm}
    model = smp.create_model(
        arch, encoder_name=encoder, encoder_weights=encoder_weights, in_channels=3, classes=classes, **extra
    )
    if decoder_norm == "groupnorm":
        _batch_to_group_norm(model.decoder)
    return model


def _batch_to_group_norm(module: torch.nn.Module) -> None:
    """Replace every BatchNorm2d below module by a GroupNorm with as many groups (<= 32) as divide its channels."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            groups = math.gcd(32, child.num_features)
            setattr(module, name, torch.nn.GroupNorm(groups, child.num_features, eps=child.eps))
        else:
            _batch_to_group_norm(child)


def version_tuple(version: str) -> tuple[int, ...]:
    """'2.4.1+cu121' -> (2, 4, 1); enough to order torch releases."""
    return tuple(int(x) for x in re.findall(r"\d+", version.split("+")[0])[:3])


def check_traced_version(path: Path) -> str | None:
    """Warn when this torch is older than the one a TorchScript file was traced with; return that version."""
    side = path.with_name(path.name + TORCH_VERSION_SUFFIX)
    if not side.is_file():
        return None
    traced = side.read_text().strip()
    if version_tuple(torch.__version__) < version_tuple(traced):
        log.warning("%s was traced with torch %s but this is torch %s: an older torch may fail to load it or "
                    "run it differently; re-export with the kernel's torch if loading fails", path, traced,
                    torch.__version__)
    return traced


def build_model(config: CheckpointConfig, folder: Path, device: torch.device) -> torch.nn.Module:
    """Instantiate the network of a checkpoint folder and load its weights (no network access)."""
    path = folder / config.weights
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; config.json names weights={config.weights!r}")
    if config.framework == "torchscript":
        check_traced_version(path)
        with warnings.catch_warnings():  # torch marks jit deprecated; the checkpoint contract uses it on purpose
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location=device).eval()
    model = smp_model(config.arch, config.encoder, len(config.classes), config.decoder_norm)
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

    def scale(
        self,
        height: int,
        width: int,
        scale_mode: str = "reduce",
        pixel_size: float | None = None,
        max_side: int | None = None,
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
        return Scale((max(1, round(height * factor)), max(1, round(width * factor))), factor, rule, capped)

    def working_size(
        self,
        height: int,
        width: int,
        scale_mode: str = "reduce",
        pixel_size: float | None = None,
        max_side: int | None = None,
    ) -> tuple[int, int]:
        """(h, w) the image is resampled to before tiling, per --scale-mode (see scale)."""
        return self.scale(height, width, scale_mode, pixel_size, max_side).size

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
        self,
        image: np.ndarray,
        scale_mode: str = "reduce",
        pixel_size: float | None = None,
        tta: int = 0,
        max_side: int | None = None,
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
