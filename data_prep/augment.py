"""Train/validation augmentations shared by both trainers, as named presets chosen by config.

Presets: "flips" (flips and 90-degree rotations), "flips+stain" (flips, and 30% of the tiles re-stained as H&E or
PAS), "seed10" (the seed team's ten transforms: flips/rotate90,
affine shift-scale-rotate, Gauss noise, Gauss blur, brightness/contrast, hue/saturation/value, optical,
grid and piecewise-affine distortion), "seed10+stain" (seed10 plus stain transfer to H&E/PAS and HED stain
jitter, for the HPA -> HuBMAP stain shift) and "hubmap" (flips, a wider-zoom affine, mild brightness/contrast
and HSV, stain transfer and HED jitter); "flips+histmatch" and "seed10+histmatch" add histogram matching to
target-domain images (the 3rd place: albumentations' HistogramMatching, blend 0.5-1.0, half the tiles; the
reference images come from `histmatch_targets`, FastaiConfig.histmatch_targets); "flips+fda" swaps the low
Fourier amplitudes of half the crops with a target image's (albumentations' FDA, Yang & Soatto 2020; same
references); "flips+colour" is the 1st place's strong colour augmentation (HSV +-20, gamma 0.25-2.5). They take and return a uint8 HWC image and a uint8 class-index mask of the same size,
without normalisation (trainers normalise with the checkpoint's mean/std).

Argument names are albumentations 2.x ones: 2.0.8 only warns about 1.x names such as
GaussNoise(var_limit=...) and then ignores them, so tests/test_augment.py turns its warnings into errors.

Every transform draws from its own generators: call `reseed` (or `reseed_for_worker` in a Dataset) so that
DataLoader workers and epochs draw independently; see reseed_for_worker for the one line a Dataset needs.
"""

from __future__ import annotations

import os
import random
import warnings

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # its import-time PyPI version check fails offline

from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch.utils.data  # noqa: E402
from albumentations.core.transforms_interface import BaseTransformInitSchema  # noqa: E402
from pydantic import Field  # noqa: E402

# Ruifrok & Johnston stain vectors: one definition, in inference.input_modes
from inference.input_modes import HED_FROM_RGB, RGB_FROM_HED  # noqa: E402

PRESETS: tuple[str, ...] = (
    "flips", "flips+stain", "seed10", "seed10+stain", "hubmap", "flips+histmatch", "seed10+histmatch",
    "flips+colour", "flips+fda", "flips+colour+fda",
)  # fmt: skip
REFERENCE_PRESETS = ("+histmatch", "+fda")  # preset suffixes that need target reference images
REFERENCE_MAX_SIDE = 1024  # references are resized to each crop anyway; this bounds the memory per worker

_OPTICAL_DENSITY = (-np.log((np.arange(256) + 1.0) / 256.0)).astype(np.float32)  # uint8 value -> OD
_MAX_DENSITY = float(np.log(256.0))  # OD of a 0 pixel


def reseed(compose: A.BaseCompose | A.BasicTransform, seed: int) -> None:
    """Give every transform in `compose` (recursively, OneOf included) its own numpy and python generators.

    The generators are spawned from numpy.random.SeedSequence(seed), so streams are independent of each other
    and reproducible for a given seed. albumentations' own `Compose(seed=...)` and `set_random_seed` hand every
    transform the *same* seed, so e.g. HorizontalFlip and VerticalFlip of one Compose always fire together.
    """
    _reseed(compose, np.random.SeedSequence(seed))


def _reseed(node: A.BaseCompose | A.BasicTransform, sequence: np.random.SeedSequence) -> None:
    children = list(node.transforms) if isinstance(node, A.BaseCompose) else []
    own, *per_child = sequence.spawn(1 + len(children))
    numpy_seq, python_seq = own.spawn(2)
    # A Compose's set_random_state also hands its generators to its children; each child is then overridden below.
    node.set_random_state(
        np.random.Generator(np.random.PCG64(numpy_seq)), random.Random(int(python_seq.generate_state(4, np.uint64)[0]))
    )
    for child, child_seq in zip(children, per_child, strict=True):
        _reseed(child, child_seq)


def worker_seed() -> int:
    """This DataLoader worker's seed for this epoch, or torch.initial_seed() in the main process.

    torch draws a new base seed every time a (non-persistent) DataLoader starts its workers and adds the worker
    id, so the value differs per worker and per epoch; frameworks that call torch.manual_seed in their
    worker_init_fn (mmengine seeds it with seed + worker id, the same every epoch) do not change it.
    """
    info = torch.utils.data.get_worker_info()
    return int(info.seed) if info is not None else int(torch.initial_seed())


def reseed_for_worker(compose: A.BaseCompose, last_seed: int | None) -> int:
    """Reseed `compose` from worker_seed() when that differs from last_seed; return the seed now in use.

    Call it at the top of a Dataset's __getitem__ and keep the returned value on the dataset
    (`self._aug_seed = reseed_for_worker(self.transform, self._aug_seed)`): a Compose built in the parent
    process is copied into every worker with the same generator state, so without this every worker draws the
    same augmentations and every epoch repeats the last. In the main process (num_workers=0) it seeds once from
    torch's seed and the stream then runs on across epochs.
    """
    seed = worker_seed()
    if seed != last_seed:
        reseed(compose, seed)
    return seed


def optical_density(image: np.ndarray) -> np.ndarray:
    """Per-channel optical density (float32) of a uint8 image, by lookup table."""
    return cv2.LUT(image, _OPTICAL_DENSITY.reshape(256, 1))


def hed_jitter(image: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Scale and shift an RGB uint8 image's H, E and DAB stain densities (3 values each), vectorised.

    Deconvolution, jitter and reconvolution are linear in optical density, so they fold into one affine
    colour transform, od' = od @ (HED_FROM_RGB diag(scale) RGB_FROM_HED) + shift @ RGB_FROM_HED, which
    OpenCV applies to every pixel in one call.
    """
    matrix = HED_FROM_RGB @ np.diag(scale) @ RGB_FROM_HED
    offset = np.asarray(shift) @ RGB_FROM_HED
    affine = np.hstack([matrix.T, offset[:, None]]).astype(np.float32)  # cv2.transform: dst = M @ [src; 1]
    density = cv2.transform(optical_density(image), affine)
    np.clip(density, 0.0, _MAX_DENSITY, out=density)  # keeps 256 * exp(-od) - 1 within [0, 255]
    return cv2.convertScaleAbs(cv2.exp(-density), alpha=256.0, beta=-1.0)  # rounds to uint8


class HEDJitter(A.ImageOnlyTransform):
    """Stain augmentation (Tellez et al. 2018): per image, H/E/DAB densities times U(1-s, 1+s) plus U(-b, b)."""

    class InitSchema(BaseTransformInitSchema):
        scale_limit: float = Field(ge=0, lt=1)
        shift_limit: float = Field(ge=0, le=1)

    def __init__(self, scale_limit: float = 0.3, shift_limit: float = 0.05, p: float = 0.5):
        super().__init__(p=p)
        self.scale_limit = scale_limit
        self.shift_limit = shift_limit

    def get_params(self) -> dict[str, np.ndarray]:
        """Draw the per-stain scale and shift."""
        rng = self.random_generator
        return {
            "scale": rng.uniform(1 - self.scale_limit, 1 + self.scale_limit, 3),
            "shift": rng.uniform(-self.shift_limit, self.shift_limit, 3),
        }

    def apply(self, img: np.ndarray, scale: np.ndarray, shift: np.ndarray, **params: Any) -> np.ndarray:
        """Jitter the stains of a uint8 RGB image."""
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
            raise TypeError(f"HEDJitter needs an (h, w, 3) uint8 RGB image, got {img.dtype} {img.shape}")
        return hed_jitter(img, scale, shift)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Arguments that serialisation (A.to_dict) records."""
        return ("scale_limit", "shift_limit")


# Target stain vectors (unit RGB optical density, rows: hematoxylin, counterstain). H&E: the reference of
# Macenko et al. 2009 (ISBI), fitted on real H&E slides and used as torchstain's default Macenko target.
# H-PAS: G. Landini's "H PAS" vectors of the ImageJ/Fiji Colour Deconvolution plugin (measured, marked GL).
STAIN_VECTORS: dict[str, np.ndarray] = {
    "he": np.array([[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581]]),
    "pas": np.array([[0.644211, 0.716556, 0.266844], [0.175411, 0.972178, 0.154589]]),
}
# Natural-log OD summed over RGB: below TISSUE_OD[0] is bare glass (about 245 per channel), above TISSUE_OD[1]
# is tissue; random background counterstain is added in proportion, so the glass stays white.
TISSUE_OD = (0.2, 0.6)


def stain_transfer(image: np.ndarray, stain_matrix: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Re-stain an RGB uint8 image: HED concentrations times new stain rows, plus background OD on tissue.

    Colour deconvolution (HED_FROM_RGB) and recombination with `stain_matrix` (3x3, rows: the new OD of one
    unit of hematoxylin, eosin and DAB) are linear in optical density and fold into one colour matrix;
    `background` (3 ODs) is added in proportion to how much tissue a pixel shows. RGB_FROM_HED and zero
    background give back the image.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise TypeError(f"stain transfer needs an (h, w, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    od = optical_density(image)
    matrix = (HED_FROM_RGB @ np.asarray(stain_matrix)).T.astype(np.float32)  # cv2.transform: dst = M @ src
    background = np.asarray(background, np.float32)
    if not background.any():
        density = cv2.transform(od, matrix)
        np.clip(density, 0.0, _MAX_DENSITY, out=density)
        return cv2.convertScaleAbs(cv2.exp(-density), alpha=256.0, beta=-1.0)
    # The tissue weight carries the background stain: density_j = ((od_R m_j0 + od_G m_j1) + od_B m_j2) + tissue b_j.
    low, high = TISSUE_OD
    ramp = np.array([[1, 1, 1, -low]], np.float32) / (high - low)
    tissue = cv2.transform(od, ramp)
    np.clip(tissue, 0.0, 1.0, out=tissue)
    # Summed channel plane by channel plane from 256-entry tables of each product m_jk * od(value), in float32 and in
    # the order OpenCV's 4-channel cv2.transform (its scalar path) adds them: the same bits as cv2.merge([od, tissue])
    # through that transform, in half the time. Negated (exactly), so exp needs no negation pass.
    products = -(matrix[:, :, None] * _OPTICAL_DENSITY)  # [output channel, input channel, uint8 value]
    channels = cv2.split(image)
    out = []
    for j in range(3):
        density = cv2.LUT(channels[0], products[j, 0])
        density += cv2.LUT(channels[1], products[j, 1])
        density += cv2.LUT(channels[2], products[j, 2])
        density += -background[j] * tissue
        np.clip(density, -_MAX_DENSITY, 0.0, out=density)
        out.append(cv2.convertScaleAbs(cv2.exp(density), alpha=256.0, beta=-1.0))
    return cv2.merge(out)


class StainTransfer(A.ImageOnlyTransform):
    """Re-synthesise an HPA tile (hematoxylin + DAB) as an H&E- or PAS-like one, for the HPA -> HuBMAP stain shift.

    Per image: a target stain ("he" or "pas"), hematoxylin kept at a random intensity, DAB density mapped to the
    counterstain by a random factor (HPA's antibody-positive structures become eosin/PAS-rich instead of
    brown), random background counterstain on tissue, and stain vectors perturbed by `vector_jitter`. Every
    parameter moves from the identity towards that target by `strength` (0 returns the image unchanged).
    """

    class InitSchema(BaseTransformInitSchema):
        strength: float = Field(ge=0, le=1)
        stains: tuple[str, ...]
        hematoxylin_scale: tuple[float, float]
        dab_to_stain: tuple[float, float]
        background: tuple[float, float]
        vector_jitter: float = Field(ge=0, le=0.5)

    def __init__(
        self,
        strength: float = 1.0,
        stains: tuple[str, ...] = ("he", "pas"),
        hematoxylin_scale: tuple[float, float] = (0.8, 1.5),
        dab_to_stain: tuple[float, float] = (0.3, 1.0),
        background: tuple[float, float] = (0.15, 0.7),
        vector_jitter: float = 0.04,
        p: float = 0.5,
    ):
        super().__init__(p=p)
        unknown = set(stains) - set(STAIN_VECTORS)
        if not stains or unknown:
            raise ValueError(f"stains must be a non-empty subset of {tuple(STAIN_VECTORS)}, got {stains}")
        for name, (low, high) in {
            "hematoxylin_scale": hematoxylin_scale,
            "dab_to_stain": dab_to_stain,
            "background": background,
        }.items():
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be a (low, high) range with 0 <= low <= high, got {(low, high)}")
        self.strength = strength
        self.stains = tuple(stains)
        self.hematoxylin_scale = hematoxylin_scale
        self.dab_to_stain = dab_to_stain
        self.background = background
        self.vector_jitter = vector_jitter

    def _jittered(self, vector: np.ndarray) -> np.ndarray:
        v = np.clip(vector + self.random_generator.normal(0, self.vector_jitter, 3), 0.01, None)
        return v / np.linalg.norm(v)

    def get_params(self) -> dict[str, np.ndarray]:
        """Draw the target stain, intensities and perturbed vectors; blend them with the identity by strength."""
        rng = self.random_generator
        stain = self.stains[int(rng.integers(len(self.stains)))]
        hematoxylin, counterstain = (self._jittered(v) for v in STAIN_VECTORS[stain])
        target = np.stack(
            [
                rng.uniform(*self.hematoxylin_scale) * hematoxylin,
                counterstain,  # HPA's faint eosin-channel residue stays a counterstain
                rng.uniform(*self.dab_to_stain) * counterstain,
            ]
        )
        s = self.strength
        return {
            "stain_matrix": (1 - s) * RGB_FROM_HED + s * target,
            "background_od": s * rng.uniform(*self.background) * counterstain,
        }

    def apply(self, img: np.ndarray, stain_matrix: np.ndarray, background_od: np.ndarray, **params: Any) -> np.ndarray:
        """Re-stain a uint8 RGB image (unchanged at strength 0)."""
        if self.strength == 0:
            return img
        return stain_transfer(img, stain_matrix, background_od)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Arguments that serialisation (A.to_dict) records."""
        return ("strength", "stains", "hematoxylin_scale", "dab_to_stain", "background", "vector_jitter")


class HeldReferences:
    """Mixin for albumentations' domain-adaptation transforms whose reference images the transform holds.

    albumentations 2.x wants the references passed with every call (`hm_metadata=[...]`, `fda_metadata=[...]`) and
    deprecates holding them; our presets are called with image and mask only.
    """

    @property
    def targets_as_params(self) -> list[str]:
        """No per-call reference key: the references are the transform's own."""
        return []


def held_references(references: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    """Contiguous copies of the reference images a transform holds; at least one is needed."""
    if not references:
        raise ValueError(f"{what} needs at least one reference image")
    return [np.ascontiguousarray(r) for r in references]


class TargetHistogramMatching(HeldReferences, A.HistogramMatching):
    """albumentations' HistogramMatching with the reference images held by the transform.

    albumentations 2.x wants the references passed with every call (`hm_metadata=[...]`) and deprecates holding
    them; our presets are called with image and mask only, so this keeps them and draws one per call. Matching
    is per-channel CDF matching against the reference resized to the crop, blended with the input by a ratio
    drawn from blend_ratio (albumentations' apply_histogram, about 1 ms per 256 px crop).
    """

    def __init__(
        self, references: Sequence[np.ndarray], blend_ratio: tuple[float, float] = (0.5, 1.0), p: float = 0.5
    ) -> None:
        super().__init__(blend_ratio=blend_ratio, p=p)
        self.references = held_references(references, "histogram matching")

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Draw a reference and a blend ratio."""
        return {
            "reference_image": self.references[self.py_random.randrange(len(self.references))],
            "blend_ratio": self.py_random.uniform(*self.blend_ratio),
        }


class TargetFDA(HeldReferences, A.FDA):
    """albumentations' FDA (Fourier domain adaptation) with the target images held by the transform.

    As TargetHistogramMatching: albumentations 2.x wants references passed with every call (`fda_metadata=[...]`);
    our presets are called with image and mask only. The low-frequency amplitude spectrum of the crop (a square
    of beta x its side) is replaced by a target image's, resized to the crop: its stain colours and illumination,
    not its structures.
    """

    def __init__(self, references: Sequence[np.ndarray], beta_limit: tuple[float, float] = (0.01, 0.05),
                 p: float = 0.5) -> None:
        super().__init__(beta_limit=beta_limit, p=p)
        self.references = held_references(references, "FDA")

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Draw a target image (resized to the crop) and a beta."""
        height, width = params["shape"][:2]
        target = self.references[self.py_random.randrange(len(self.references))]
        return {"target_image": cv2.resize(target, (width, height), interpolation=cv2.INTER_AREA),
                "beta": self.py_random.uniform(*self.beta_limit)}


def load_references(paths: Sequence[str | Path]) -> list[np.ndarray]:
    """RGB uint8 reference images from files or folders, each area-downscaled to at most REFERENCE_MAX_SIDE."""
    from data_prep.stain_copies import image_paths, read_any  # torchstain and scikit only where asked for

    images = []
    for path in image_paths([Path(p) for p in paths]):
        image = read_any(path)
        factor = REFERENCE_MAX_SIDE / max(image.shape[:2])
        if factor < 1:
            size = (max(1, round(image.shape[1] * factor)), max(1, round(image.shape[0] * factor)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        images.append(image)
    return images


def _cell_weights(size: int, points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel along one axis: linear weights on the control points, one-hot cell, position inside the cell."""
    position = np.linspace(0, points - 1, size, dtype=np.float32)
    cell = np.minimum(position.astype(np.int64), points - 2)
    frac = (position - cell).astype(np.float32)
    pixels = np.arange(size)
    lerp = np.zeros((size, points), np.float32)
    lerp[pixels, cell] = 1 - frac
    lerp[pixels, cell + 1] = frac
    onehot = np.zeros((size, points - 1), np.float32)
    onehot[pixels, cell] = 1
    return lerp, onehot, frac


def piecewise_affine_maps(shape: tuple[int, int], displacement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps of a piecewise-affine warp: control-point displacements, interpolated on a triangulated grid.

    `displacement` is (rows, cols, 2) pixel offsets (x, y) of a regular grid of control points spanning the
    image, corners included. Each grid cell is split along its diagonal into two triangles, and inside each
    triangle the displacement is the barycentric (affine) mix of its three corners'. Every pixel's offset is a
    convex combination of control offsets, so it is never longer than the longest of them, and zero offsets are
    the identity. (albumentations 2.0.8's PiecewiseAffine instead mixes the jittered control *positions* by
    inverse-distance weights, which pulls every pixel toward the nearest control point: with zero jitter and a
    4x4 grid, pixels of a 768 px tile still move 58 px on average, up to 118 px.)
    """
    height, width = shape
    rows, cols = displacement.shape[:2]
    if rows < 2 or cols < 2:
        raise ValueError(f"a piecewise-affine grid needs at least 2x2 control points, got {rows}x{cols}")
    # Triangle interpolation = bilinear interpolation + twist * (max(0, fx + fy - 1) - fx * fy), where fx, fy are
    # a pixel's position inside its cell and twist = d00 - d01 - d10 + d11 is its cell's; both parts are products
    # of small (pixels x control points) matrices, so the whole field costs a few matrix products.
    lerp_y, onehot_y, fy = _cell_weights(height, rows)
    lerp_x, onehot_x, fx = _cell_weights(width, cols)
    fold = np.maximum(fx[None, :] + fy[:, None] - 1, 0) - fx[None, :] * fy[:, None]
    maps = []
    for axis, base in (
        (0, np.arange(width, dtype=np.float32)[None, :]),
        (1, np.arange(height, dtype=np.float32)[:, None]),
    ):
        d = displacement[..., axis].astype(np.float32)
        twist = d[:-1, :-1] - d[:-1, 1:] - d[1:, :-1] + d[1:, 1:]
        offset = lerp_y @ d @ lerp_x.T + (onehot_y @ twist @ onehot_x.T) * fold
        maps.append(offset + base)
    return maps[0], maps[1]


def bounded_control_displacements(grid: tuple[int, int], bound: float, rng: np.random.Generator) -> np.ndarray:
    """Random (rows, cols, 2) control-point offsets: normal with sigma bound / 3 per axis, clipped to length bound."""
    offsets = rng.normal(0.0, bound / 3, (*grid, 2)).astype(np.float32)
    length = np.linalg.norm(offsets, axis=-1, keepdims=True)
    return offsets * np.minimum(1.0, bound / np.maximum(length, 1e-12)).astype(np.float32)


class BoundedPiecewiseAffine(A.PiecewiseAffine):
    """A piecewise-affine warp whose pixel displacement never exceeds `scale` (a fraction of the shorter side).

    Same arguments as albumentations' PiecewiseAffine, with `scale` redefined as the displacement bound (pixels
    when absolute_scale): control points move by N(0, (bound / 3)^2) per axis, clipped to the bound, and pixels
    between them by the affine mix of their triangle (see piecewise_affine_maps). Images use `interpolation`
    (linear), masks `mask_interpolation` (nearest), and borders reflect by default.
    """

    def __init__(self, border_mode: int = cv2.BORDER_REFLECT_101, **kwargs: Any):
        with warnings.catch_warnings():  # its "very slow" warning is about the per-pixel loop not used here
            warnings.filterwarnings("ignore", message="This augmenter is very slow", category=UserWarning)
            super().__init__(border_mode=border_mode, **kwargs)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Draw the grid size, bound and control offsets, then the remap maps."""
        height, width = params["shape"][:2]
        nb_rows = max(2, self.py_random.randint(*self.nb_rows))
        nb_cols = max(2, self.py_random.randint(*self.nb_cols))
        scale = self.py_random.uniform(*self.scale)
        bound = scale if self.absolute_scale else scale * min(height, width)
        offsets = bounded_control_displacements((nb_rows, nb_cols), bound, self.random_generator)
        map_x, map_y = piecewise_affine_maps((height, width), offsets)
        return {"map_x": map_x, "map_y": map_y}


# np.rot90's factor k (counter-clockwise quarter turns) as cv2.rotate codes
_CV2_ROTATIONS = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_CLOCKWISE}


class OpenCVRandomRotate90(A.RandomRotate90):
    """albumentations' RandomRotate90 (same draws, same pixels) turning images and masks with cv2.rotate.

    np.rot90 returns a strided view that a later transform copies pixel by pixel; cv2.rotate writes the turned
    image in one pass (about 5x faster on a 1024 px crop, benchmarks/data_pipeline.py).
    """

    def apply(self, img: np.ndarray, factor: int, **params: Any) -> np.ndarray:
        """Turn an image or mask `factor` quarter turns counter-clockwise, as np.rot90(img, factor)."""
        if factor == 0 or (img.ndim == 3 and img.shape[-1] > 4):  # cv2 handles at most 4 channels
            return np.rot90(img, factor)
        return cv2.rotate(img, _CV2_ROTATIONS[factor])


def _flips() -> list[A.BasicTransform]:
    return [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), OpenCVRandomRotate90(p=0.5)]


def _seed10() -> list[A.BasicTransform]:
    reflect = cv2.BORDER_REFLECT_101  # reflected tissue instead of black corners, for images and masks alike
    return [
        *_flips(),
        # ShiftScaleRotate(0.0625, 0.1, 45) of albumentations 1.x, in Affine's terms.
        A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.9, 1.1), rotate=(-45, 45), border_mode=reflect, p=0.5),
        A.OneOf(
            [
                A.GaussNoise(std_range=(0.012, 0.028), p=1.0),  # 1.x var_limit=(10, 50): std sqrt(var) / 255
                A.GaussianBlur(blur_limit=(3, 7), sigma_limit=(0.5, 1.5), p=1.0),
            ],
            p=0.3,
        ),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10, p=0.5),
        A.OneOf(
            [
                A.OpticalDistortion(distort_limit=0.1, border_mode=reflect, p=1.0),
                A.GridDistortion(num_steps=5, distort_limit=0.3, border_mode=reflect, p=1.0),
                BoundedPiecewiseAffine(scale=(0.02, 0.04), nb_rows=4, nb_cols=4, border_mode=reflect, p=1.0),
            ],
            p=0.3,
        ),
    ]


def _strong_colour() -> list[A.BasicTransform]:
    # The 1st place's colour augmentation: hue, saturation and value shifted by up to 20, gamma 25-250 (/ 100).
    return [
        A.HueSaturationValue(hue_shift_limit=20, sat_shift_limit=20, val_shift_limit=20, p=0.8),
        A.RandomGamma(gamma_limit=(25, 250), p=0.8),
    ]


def _stain() -> list[A.BasicTransform]:
    # Half the tiles re-stained as H&E or PAS, then the HED jitter on top (its eosin channel is only non-zero there).
    return [StainTransfer(p=0.5), HEDJitter(scale_limit=0.3, shift_limit=0.05, p=0.5)]


def _hubmap() -> list[A.BasicTransform]:
    reflect = cv2.BORDER_REFLECT_101
    return [
        *_flips(),
        # Wider zoom than seed10: HuBMAP pixel sizes differ from HPA's even after resampling to the train scale.
        A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.8, 1.25), rotate=(-45, 45), border_mode=reflect, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
        A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=15, val_shift_limit=8, p=0.5),
        *_stain(),
    ]


def train_transforms(
    preset: str, seed: int | None = None, histmatch_targets: Sequence[str | Path] = ()
) -> A.Compose:
    """The training pipeline of a named preset (see PRESETS); seed makes it reproducible (see reseed).

    histmatch_targets: reference images (files or folders) of the "+histmatch" and "+fda" presets.
    """
    suffix = next((s for s in REFERENCE_PRESETS if preset.endswith(s)), None)
    if suffix is not None:
        if not histmatch_targets:
            raise ValueError(f"preset {preset!r} needs reference images: pass histmatch_targets "
                             "(train.fastai_unet --histmatch-targets H&E_PAS_IMAGES)")
        base = train_transforms(preset.removesuffix(suffix)).transforms
        references = load_references(histmatch_targets)
        last = (TargetHistogramMatching(references, (0.5, 1.0), p=0.5) if suffix == "+histmatch"
                else TargetFDA(references, beta_limit=(0.01, 0.05), p=0.5))
        compose = A.Compose([*base, last])
        if seed is not None:
            reseed(compose, seed)
        return compose
    if preset == "flips":
        transforms = _flips()
    elif preset == "flips+colour":
        transforms = [*_flips(), *_strong_colour()]
    elif preset == "flips+stain":  # light: a share of the crops re-stained, nothing else on top
        transforms = [*_flips(), StainTransfer(p=0.3)]
    elif preset == "seed10":
        transforms = _seed10()
    elif preset == "seed10+stain":
        transforms = [*_seed10(), *_stain()]
    elif preset == "hubmap":
        transforms = _hubmap()
    else:
        raise ValueError(f"unknown augmentation preset {preset!r}; expected one of {PRESETS}")
    compose = A.Compose(transforms)
    if seed is not None:
        reseed(compose, seed)
    return compose


def valid_transforms() -> A.Compose:
    """The validation pipeline: tiles are used as they are (no normalisation here either)."""
    return A.Compose([])
