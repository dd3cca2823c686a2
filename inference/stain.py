"""Optional stain normalisation at inference: Macenko et al. (ISBI 2009) or Reinhard et al. (2001), with torchstain.

The models learn HPA's hematoxylin + DAB look; HuBMAP test images are H&E or PAS. Macenko's method finds an
image's two dominant stain vectors and re-renders its stain concentrations with a reference's vectors and
intensities. Reinhard's matches each CIE L*a*b* channel's mean and standard deviation to the reference's.
Fit the reference on training images (their two stains are hematoxylin and DAB) to map a test image's eosin or
PAS onto DAB, or use torchstain's H&E reference ("macenko", Macenko only):

    python -m inference.stain --images train_images --out stain_reference.json [--sample 40] [--seed 0]

`normalise_stain(image, reference)` and `reinhard_normalise(image, reference)` never raise: a blank, grey,
single-stain or otherwise unfit image comes back unchanged with a logged warning, because they run inside the
submission loop. References written before Reinhard statistics were added hold none (refit them for Reinhard).
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer
from tqdm import tqdm

from inference.cli import HelpFormatter, hidden_alias
from inference.io import ImageReadError, read_image

log = logging.getLogger("inference.stain")

TRANSMITTED = 240  # torchstain's Io: the brightest (glass) intensity, in uint8
MIN_STAINED = 500  # fewer stained pixels than this give no usable stain vectors
MAX_FIT_PIXELS = 1_000_000  # pixels sampled to estimate an image's stain vectors
MAX_STAIN_COSINE = 0.995  # two "stains" closer than ~6 degrees are one stain (or grey): nothing to normalise
_OPTICAL_DENSITY = -np.log((np.arange(256, dtype=np.float32) + 1) / TRANSMITTED)  # uint8 -> OD, torchstain's formula


@dataclass(frozen=True)
class StainReference:
    """A Macenko target: two unit stain vectors (RGB optical density, columns) and their 99th-percentile amounts."""

    stain_matrix: np.ndarray  # (3, 2): first column hematoxylin, second eosin / DAB / PAS
    max_concentrations: np.ndarray  # (2,)
    lab_mean: np.ndarray | None = None  # (3,) Reinhard target: CIE L*a*b* means (L in 0..100), None = not fitted
    lab_std: np.ndarray | None = None  # (3,) and standard deviations

    @property
    def has_reinhard(self) -> bool:
        """Whether the reference holds Reinhard's L*a*b* statistics."""
        return self.lab_mean is not None and self.lab_std is not None

    def to_json(self) -> dict[str, list]:
        """JSON-ready fields."""
        fields = {"stain_matrix": self.stain_matrix.tolist(), "max_concentrations": self.max_concentrations.tolist()}
        if self.has_reinhard:
            fields.update(lab_mean=self.lab_mean.tolist(), lab_std=self.lab_std.tolist())
        return fields

    def save(self, path: Path) -> Path:
        """Write the reference as JSON; return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


def macenko_reference() -> StainReference:
    """torchstain's default target: the H&E reference of Macenko's original implementation."""
    normalizer = NumpyMacenkoNormalizer()
    return StainReference(np.array(normalizer.HERef, float), np.array(normalizer.maxCRef, float))


def load_reference(source: str | Path) -> StainReference:
    """A reference from a JSON file written by fit/save, or "macenko" for torchstain's H&E default."""
    if str(source) == "macenko":
        return macenko_reference()
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"stain reference {path} not found; fit one with `python -m inference.stain`")
    fields = json.loads(path.read_text())
    matrix = np.asarray(fields["stain_matrix"], float)
    maxima = np.asarray(fields["max_concentrations"], float)
    if matrix.shape != (3, 2) or maxima.shape != (2,) or not (np.isfinite(matrix).all() and np.isfinite(maxima).all()):
        raise ValueError(f"{path}: expected a finite 3x2 stain_matrix and 2 max_concentrations")
    lab = [np.asarray(fields[k], float) if k in fields else None for k in ("lab_mean", "lab_std")]
    if any(v is not None and (v.shape != (3,) or not np.isfinite(v).all()) for v in lab) or (
        lab[1] is not None and not (lab[1] > 0).all()
    ):
        raise ValueError(f"{path}: lab_mean and lab_std must be 3 finite numbers (lab_std positive)")
    return StainReference(matrix, maxima, *lab)


def _stained_pixels(pixels: np.ndarray, beta: float) -> int:
    """How many pixels Macenko's method uses: optical density at least beta in every channel."""
    return int(np.count_nonzero((pixels.reshape(-1, 3) <= TRANSMITTED * np.exp(-beta) - 1).all(axis=1)))


def image_stains(
    image: np.ndarray, beta: float = 0.15, max_pixels: int = MAX_FIT_PIXELS, seed: int = 0
) -> StainReference:
    """An RGB uint8 image's own Macenko stain vectors and amounts (torchstain's fit), from at most max_pixels.

    Raises ValueError when the image cannot give two distinct stains (blank, grey, a single stain).
    """
    pixels = image.reshape(-1, 3)
    if len(pixels) > max_pixels:  # the vectors are percentiles of a colour distribution: a sample estimates them
        pixels = pixels[np.random.default_rng(seed).choice(len(pixels), max_pixels, replace=False)]
    stained = _stained_pixels(pixels, beta)
    if stained < MIN_STAINED:
        raise ValueError(f"{stained} stained pixels, fewer than {MIN_STAINED} (blank or very pale image)")
    normalizer = NumpyMacenkoNormalizer()
    # Degenerate colour distributions give NaN or infinite stain amounts: make numpy raise instead of warn.
    with warnings.catch_warnings(), np.errstate(invalid="raise", divide="raise", over="ignore", under="ignore"):
        warnings.simplefilter("error", RuntimeWarning)
        normalizer.fit(pixels[:, None, :], Io=TRANSMITTED, beta=beta)
    matrix, maxima = np.asarray(normalizer.HERef, float), np.asarray(normalizer.maxCRef, float)
    if not (np.isfinite(matrix).all() and np.isfinite(maxima).all() and (maxima > 0).all()):
        raise ValueError(f"no usable stain amounts (maxima {maxima})")
    cosine = abs(matrix[:, 0] @ matrix[:, 1]) / (np.linalg.norm(matrix[:, 0]) * np.linalg.norm(matrix[:, 1]))
    if cosine > MAX_STAIN_COSINE:
        raise ValueError(f"the two stain vectors are nearly parallel (cosine {cosine:.4f}): one stain or a grey image")
    return StainReference(matrix, maxima)


def fit_reference(
    images: Iterable[np.ndarray], pixels_per_image: int = 200_000, seed: int = 0, beta: float = 0.15
) -> StainReference:
    """Fit a Macenko reference on random pixels pooled from several RGB uint8 images."""
    rng = np.random.default_rng(seed)
    samples = []
    for image in images:
        flat = image.reshape(-1, 3)
        samples.append(flat[rng.choice(len(flat), min(pixels_per_image, len(flat)), replace=False)])
    if not samples:
        raise ValueError("fit_reference needs at least one image")
    pooled = np.concatenate(samples)
    macenko = image_stains(pooled[:, None, :], beta, max_pixels=len(pooled))
    reinhard = NumpyReinhardNormalizer()
    reinhard.fit(pooled[:, None, :])
    return StainReference(macenko.stain_matrix, macenko.max_concentrations,
                          np.asarray(reinhard.target_means, float), np.asarray(reinhard.target_stds, float))


def normalise_stain(image: np.ndarray, reference: StainReference, beta: float = 0.15) -> np.ndarray:
    """Macenko-normalise an (h, w, 3) uint8 RGB image to `reference`; on any unfit input return it unchanged.

    The image's stain vectors come from torchstain's fit on a pixel sample; re-rendering its concentrations
    with the reference's vectors and amounts is linear in optical density, so it is one 3x3 colour matrix
    applied in float32 (torchstain's own normalize keeps several float64 copies of every pixel, ~1 GB at 3000 px).
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        log.warning("stain normalisation skipped: needs (h, w, 3) uint8 RGB, got %s %s", image.dtype, image.shape)
        return image
    try:
        source = image_stains(image, beta)
    except (ValueError, IndexError, FloatingPointError, RuntimeWarning, np.linalg.LinAlgError) as exc:
        log.warning("stain normalisation skipped: %s: %s", type(exc).__name__, exc)
        return image
    # od' = HERef diag(maxCRef / maxC) pinv(HE) od: concentrations by least squares (as torchstain's lstsq),
    # rescaled to the reference's 99th percentiles, re-rendered with the reference vectors.
    scale = reference.max_concentrations / source.max_concentrations
    matrix = reference.stain_matrix @ np.diag(scale) @ np.linalg.pinv(source.stain_matrix)
    density = cv2.transform(_OPTICAL_DENSITY[image], matrix.astype(np.float32))
    return np.clip(TRANSMITTED * np.exp(-density), 0, 255).astype(np.uint8)  # truncates, as torchstain does


def lab_statistics(image: np.ndarray, max_pixels: int = MAX_FIT_PIXELS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel CIE L*a*b* mean and standard deviation of an RGB uint8 image (torchstain's Reinhard fit).

    Computed on at most max_pixels random pixels: they are moments of the colour distribution.
    """
    pixels = image.reshape(-1, 3)
    if len(pixels) > max_pixels:
        pixels = pixels[np.random.default_rng(seed).choice(len(pixels), max_pixels, replace=False)]
    normalizer = NumpyReinhardNormalizer()
    normalizer.fit(pixels[:, None, :])
    return np.asarray(normalizer.target_means, float), np.asarray(normalizer.target_stds, float)


def reinhard_normalise(image: np.ndarray, reference: StainReference) -> np.ndarray:
    """Reinhard-normalise an (h, w, 3) uint8 RGB image to `reference`'s L*a*b* statistics; unfit input unchanged.

    torchstain's NumpyReinhardNormalizer standardises each L*a*b* channel with the image's statistics and
    rescales it to the target's; this does the same with OpenCV's float32 sRGB <-> CIE L*a*b* conversion (the
    same D65 formulas), in place, instead of torchstain's half-dozen full-size copies.
    """
    if not reference.has_reinhard:
        raise ValueError("the stain reference has no Reinhard statistics: refit it with `python -m inference.stain`")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        log.warning("Reinhard normalisation skipped: needs (h, w, 3) uint8 RGB, got %s %s", image.dtype, image.shape)
        return image
    mean, std = lab_statistics(image)
    if not (np.isfinite(mean).all() and np.isfinite(std).all()) or (std < 1e-3).any():
        log.warning("Reinhard normalisation skipped: a flat colour channel (L*a*b* std %s)", np.round(std, 4))
        return image
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    gain = (reference.lab_std / std).astype(np.float32)
    lab *= gain
    lab += (reference.lab_mean - mean * gain).astype(np.float32)
    rgb = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    np.clip(rgb, 0.0, 1.0, out=rgb)
    rgb *= 255.0
    return rgb.astype(np.uint8)  # truncates, as torchstain does


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m inference.stain", description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--images", type=Path, required=True, help="folder of .tiff images (e.g. train_images)")
    ap.add_argument("--out", type=Path, default=Path("stain_reference.json"))
    ap.add_argument("--sample", type=int, default=40, help="images drawn at random from the folder (all when fewer)")
    hidden_alias(ap, "--limit", "--sample")  # the old spelling; --limit is inference.predict's first N rows
    ap.add_argument("--pixels-per-image", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = sorted(args.images.glob("*.tif*"))
    if not paths:
        raise SystemExit(f"error: no .tiff images in {args.images}")
    rng = np.random.default_rng(args.seed)
    chosen = [paths[i] for i in sorted(rng.choice(len(paths), min(args.sample, len(paths)), replace=False))]
    try:
        images = (read_image(p) for p in tqdm(chosen, desc="fit stain reference", unit="img"))
        reference = fit_reference(images, args.pixels_per_image, args.seed)
    except (ImageReadError, ValueError, RuntimeWarning) as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(f"wrote {reference.save(args.out)} from {len(chosen)} images")


if __name__ == "__main__":
    main()
