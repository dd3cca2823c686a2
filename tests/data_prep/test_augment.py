"""Augmentation presets: 2.x argument names (warnings are errors), shapes, dtypes, class-valued masks; independent
per-transform, per-worker, per-epoch draws; a bounded piecewise-affine warp; stain transfer."""

from __future__ import annotations

import warnings

import albumentations as A
import cv2
import numpy as np
import pytest
import torch.utils.data

from data_prep.augment import (
    PRESETS,
    RGB_FROM_HED,
    BoundedPiecewiseAffine,
    HEDJitter,
    StainTransfer,
    TargetHistogramMatching,
    hed_jitter,
    piecewise_affine_maps,
    reseed,
    reseed_for_worker,
    stain_transfer,
    train_transforms,
    valid_transforms,
)

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (96, 96, 3), dtype=np.uint8)  # tiles are square: RandomRotate90 swaps h, w
MASK = np.zeros((96, 96), np.uint8)
MASK[20:50, 10:40] = 3
MASK[60:90, 50:75] = 5


@pytest.fixture(scope="module")
def reference_png(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A pink H&E-like reference image for the histogram-matching presets."""
    path = tmp_path_factory.mktemp("reference") / "reference.png"
    pink = np.clip(RNG.normal((230, 150, 200), 20, (64, 80, 3)), 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(pink, cv2.COLOR_RGB2BGR))
    return str(path)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_builds_and_applies_without_warnings(preset: str, reference_png: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # albumentations only warns about 1.x argument names, then ignores them
        transform = train_transforms(preset, seed=0, histmatch_targets=[reference_png])
        for _ in range(25):
            out = transform(image=IMAGE, mask=MASK)
            assert out["image"].shape == IMAGE.shape and out["image"].dtype == np.uint8
            assert out["mask"].shape == MASK.shape and out["mask"].dtype == np.uint8
            assert set(np.unique(out["mask"])) <= {0, 3, 5}


def test_presets_differ_and_seed10_applies_every_transform(reference_png: str) -> None:
    names = {p: [type(t).__name__ for t in train_transforms(p, histmatch_targets=[reference_png])] for p in PRESETS}
    assert names["flips"] == ["HorizontalFlip", "VerticalFlip", "OpenCVRandomRotate90"]
    assert names["flips+stain"] == [*names["flips"], "StainTransfer"]
    seed10 = train_transforms("seed10")
    leaves = [type(t).__name__ for t in seed10 for t in getattr(t, "transforms", [t])]
    assert set(leaves) >= {
        "HorizontalFlip",
        "OpenCVRandomRotate90",
        "Affine",
        "GaussNoise",
        "GaussianBlur",
        "RandomBrightnessContrast",
        "HueSaturationValue",
        "OpticalDistortion",
        "GridDistortion",
        "BoundedPiecewiseAffine",
    }
    assert names["seed10+stain"] == [*names["seed10"], "StainTransfer", "HEDJitter"]
    assert {"StainTransfer", "Affine", "HueSaturationValue"} <= set(names["hubmap"])
    assert names["flips+histmatch"] == [*names["flips"], "TargetHistogramMatching"]
    assert names["seed10+histmatch"] == [*names["seed10"], "TargetHistogramMatching"]


def test_histmatch_preset_needs_references() -> None:
    with pytest.raises(ValueError, match="histmatch_targets"):
        train_transforms("flips+histmatch")


def _matcher(reference: np.ndarray, blend: float) -> A.Compose:
    compose = A.Compose([TargetHistogramMatching([reference], blend_ratio=(blend, blend), p=1.0)])
    reseed(compose, 0)
    return compose


def _histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over channels of the L1 distance between normalised 256-bin histograms."""
    return float(np.mean([
        np.abs(np.bincount(a[..., c].ravel(), minlength=256) / a[..., c].size
               - np.bincount(b[..., c].ravel(), minlength=256) / b[..., c].size).sum()
        for c in range(3)
    ]))  # fmt: skip


def test_histogram_matching_identity_at_blend_zero_and_towards_the_reference(reference_png: str) -> None:
    from data_prep.augment import load_references

    reference = load_references([reference_png])[0]
    brown = np.clip(RNG.normal((120, 80, 40), 25, IMAGE.shape), 0, 255).astype(np.uint8)  # DAB-like crop
    still = _matcher(reference, 0.0)(image=brown, mask=MASK)
    assert np.abs(still["image"].astype(int) - brown).max() <= 1  # blend 0: the input (up to rounding)
    matched = _matcher(reference, 1.0)(image=brown, mask=MASK)
    half = _matcher(reference, 0.5)(image=brown, mask=MASK)
    assert np.array_equal(matched["mask"], MASK) and np.array_equal(half["mask"], MASK)  # masks untouched
    before, after = _histogram_distance(brown, reference), _histogram_distance(matched["image"], reference)
    assert after < 0.3 * before
    assert np.abs(matched["image"].mean((0, 1)) - reference.mean((0, 1))).max() < 5
    assert _histogram_distance(half["image"], reference) < before  # part of the way


def test_old_argument_names_would_fail() -> None:
    import albumentations as A

    with warnings.catch_warnings(), pytest.raises(UserWarning, match="var_limit"):
        warnings.simplefilter("error")
        A.GaussNoise(var_limit=(10, 50))


def test_unknown_preset_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="seed10\\+stain"):
        train_transforms("seed11")


def test_valid_transforms_are_identity() -> None:
    out = valid_transforms()(image=IMAGE, mask=MASK)
    np.testing.assert_array_equal(out["image"], IMAGE)
    np.testing.assert_array_equal(out["mask"], MASK)


def test_hed_jitter_identity_and_direction() -> None:
    np.testing.assert_array_equal(hed_jitter(IMAGE, np.ones(3), np.zeros(3)), IMAGE)
    tissue = np.full((8, 8, 3), (150, 90, 160), np.uint8)  # a purple (H&E-like) pixel block
    darker = hed_jitter(tissue, np.array([1.5, 1.0, 1.0]), np.zeros(3))  # more haematoxylin
    assert (darker.astype(int) <= tissue).all() and (darker.astype(int) < tissue).any()
    white = np.full((4, 4, 3), 255, np.uint8)
    np.testing.assert_array_equal(hed_jitter(white, np.array([1.3, 0.7, 1.2]), np.zeros(3)), white)


def test_hed_jitter_transform_is_seeded() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first, second = HEDJitter(p=1.0), HEDJitter(p=1.0)
    first.set_random_seed(3)
    second.set_random_seed(3)
    a, b = first(image=IMAGE)["image"], second(image=IMAGE)["image"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, IMAGE)


# --- independent draws -------------------------------------------------------------------------------------------

ASYMMETRIC = np.arange(64, dtype=np.uint8).reshape(8, 8)[..., None].repeat(3, -1)  # every symmetry moves it


def _is_mirrored(out: np.ndarray) -> bool:
    """Whether a tile is a mirror image of ASYMMETRIC (one flip, any rotation) rather than a rotation of it."""
    for k in range(4):
        if np.array_equal(out, np.rot90(ASYMMETRIC, k)):
            return False
        if np.array_equal(out, np.rot90(ASYMMETRIC[:, ::-1], k)):
            return True
    raise AssertionError("output is not a flip/rotation of the input")


def test_flips_preset_mirrors_about_half_the_tiles() -> None:
    # Compose(seed=...) gave every transform the same stream: HorizontalFlip and VerticalFlip fired together, a
    # rotation by 180 degrees, and no tile was ever mirrored.
    transform = train_transforms("flips", seed=0)
    mirrored = np.mean([_is_mirrored(transform(image=ASYMMETRIC)["image"]) for _ in range(2000)])
    assert 0.45 < mirrored < 0.55


def test_reseed_makes_horizontal_and_vertical_flips_independent() -> None:
    compose = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
    reseed(compose, 7)
    counts = {"none": 0, "h": 0, "v": 0, "hv": 0}
    flipped = {
        "none": ASYMMETRIC,
        "h": ASYMMETRIC[:, ::-1],
        "v": ASYMMETRIC[::-1],
        "hv": ASYMMETRIC[::-1, ::-1],
    }
    for _ in range(2000):
        out = compose(image=ASYMMETRIC)["image"]
        counts[next(k for k, v in flipped.items() if np.array_equal(out, v))] += 1
    for name, count in counts.items():
        assert 420 < count < 580, (name, counts)  # 500 expected each; 4 sd is about 78


def test_reseed_gives_every_transform_its_own_generators_including_inside_oneof() -> None:
    compose = train_transforms("seed10", seed=3)
    nodes = [compose]
    for node in nodes:
        nodes.extend(getattr(node, "transforms", []))
    assert len(nodes) > 12
    assert len({id(n.random_generator) for n in nodes}) == len(nodes)
    assert len({id(n.py_random) for n in nodes}) == len(nodes)
    first_draws = {n.random_generator.random() for n in nodes} | {n.py_random.random() for n in nodes}
    assert len(first_draws) == 2 * len(nodes)


def test_fixed_seed_is_reproducible_and_seeds_differ() -> None:
    def draws(seed: int) -> list[np.ndarray]:
        transform = train_transforms("seed10+stain", seed=seed)
        return [transform(image=IMAGE, mask=MASK)["image"] for _ in range(12)]

    a, b, c = draws(5), draws(5), draws(6)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c, strict=True))


class _AugmentedTiles(torch.utils.data.Dataset):
    """A Dataset that augments one tile, with or without the per-worker reseed a trainer's Dataset should do."""

    def __init__(self, n: int, reseeded: bool) -> None:
        self.n = n
        self.reseeded = reseeded
        # Continuous draws on every call, so two draws can only be equal if their generator states were.
        self.transform = A.Compose([A.RandomBrightnessContrast(p=1.0), A.Affine(rotate=(-45, 45), p=1.0)])
        self._aug_seed: int | None = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> bytes:
        if self.reseeded:
            self._aug_seed = reseed_for_worker(self.transform, self._aug_seed)
        return self.transform(image=IMAGE)["image"].tobytes()


@pytest.mark.parametrize("reseeded", [False, True])
def test_two_workers_and_two_epochs_draw_independently(reseeded: bool) -> None:
    dataset = _AugmentedTiles(6, reseeded)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
    epochs = [list(loader) for _ in range(2)]
    if not reseeded:
        # The bug this guards against: the Compose is copied into each worker with the parent's generator state,
        # so worker 0's first tile (index 0) equals worker 1's (index 1), and epoch 2 repeats epoch 1.
        assert epochs[0][0] == epochs[0][1] and epochs[0] == epochs[1]
        return
    assert len(set(epochs[0] + epochs[1])) == 12


# --- piecewise-affine warp ---------------------------------------------------------------------------------------


def _triangle_reference(shape: tuple[int, int], disp: np.ndarray) -> np.ndarray:
    """Per-pixel loop: barycentric mix of the three control points of the pixel's triangle."""
    height, width = shape
    rows, cols = disp.shape[:2]
    out = np.zeros((height, width, 2))
    for y in range(height):
        for x in range(width):
            gy, gx = y * (rows - 1) / (height - 1), x * (cols - 1) / (width - 1)
            cy, cx = min(int(gy), rows - 2), min(int(gx), cols - 2)
            fy, fx = gy - cy, gx - cx
            d00, d01, d10, d11 = disp[cy, cx], disp[cy, cx + 1], disp[cy + 1, cx], disp[cy + 1, cx + 1]
            if fx + fy <= 1:
                offset = d00 + fx * (d01 - d00) + fy * (d10 - d00)
            else:
                offset = d11 + (1 - fx) * (d10 - d11) + (1 - fy) * (d01 - d11)
            out[y, x] = offset + (x, y)
    return out


@pytest.mark.parametrize(("shape", "grid"), [((37, 53), (4, 5)), ((20, 24), (3, 3)), ((16, 16), (2, 2))])
def test_piecewise_affine_maps_are_affine_on_each_triangle(shape, grid) -> None:
    disp = np.random.default_rng(1).normal(0, 4, (*grid, 2))
    map_x, map_y = piecewise_affine_maps(shape, disp)
    expected = _triangle_reference(shape, disp)
    np.testing.assert_allclose(map_x, expected[..., 0], atol=1e-3)
    np.testing.assert_allclose(map_y, expected[..., 1], atol=1e-3)
    assert map_x[0, 0] == pytest.approx(disp[0, 0, 0], abs=1e-4)  # corners move by their control offset
    assert map_y[-1, -1] == pytest.approx(shape[0] - 1 + disp[-1, -1, 1], abs=1e-4)


def test_piecewise_affine_with_zero_jitter_is_the_identity() -> None:
    # albumentations 2.0.8 (and the old FastPiecewiseAffine) interpolated control *positions* by inverse-distance
    # weights: with zero jitter pixels of a 768 px tile still moved 58 px on average.
    yy, xx = np.mgrid[:768, :768].astype(np.float32)
    map_x, map_y = piecewise_affine_maps((768, 768), np.zeros((4, 4, 2)))
    np.testing.assert_array_equal(map_x, xx)
    np.testing.assert_array_equal(map_y, yy)
    transform = BoundedPiecewiseAffine(scale=(0.0, 0.0), nb_rows=(3, 6), nb_cols=(3, 6), p=1.0)
    for _ in range(5):
        out = transform(image=IMAGE, mask=MASK)
        np.testing.assert_array_equal(out["image"], IMAGE)
        np.testing.assert_array_equal(out["mask"], MASK)


@pytest.mark.parametrize(("scale", "absolute", "bound"), [((0.05, 0.05), False, 0.05 * 160), ((6.0, 6.0), True, 6.0)])
def test_piecewise_affine_displacement_is_bounded_by_scale(scale, absolute, bound) -> None:
    transform = BoundedPiecewiseAffine(scale=scale, absolute_scale=absolute, nb_rows=(3, 6), nb_cols=(3, 6), p=1.0)
    transform.set_random_seed(0)
    yy, xx = np.mgrid[:160, :200].astype(np.float32)
    largest = 0.0
    for _ in range(50):
        params = transform.get_params_dependent_on_data({"shape": (160, 200, 3)}, {})
        moved = np.hypot(params["map_x"] - xx, params["map_y"] - yy).max()
        assert moved <= bound + 1e-3
        largest = max(largest, moved)
    assert largest > 0.6 * bound  # and it does warp


def test_piecewise_affine_keeps_mask_classes() -> None:
    transform = BoundedPiecewiseAffine(scale=(0.03, 0.05), p=1.0)
    out = transform(image=IMAGE, mask=MASK)
    assert set(np.unique(out["mask"])) <= {0, 3, 5} and not np.array_equal(out["image"], IMAGE)


# --- stain transfer ----------------------------------------------------------------------------------------------

BROWN = (140, 95, 55)  # a DAB-positive HPA pixel
BLUE = (140, 145, 190)  # a hematoxylin-stained HPA nucleus


def _hpa_tile() -> np.ndarray:
    tile = np.full((32, 32, 3), 245, np.uint8)  # bare glass
    tile[4:14, 4:28] = BROWN
    tile[18:28, 4:28] = BLUE
    tile[0, 0] = 0  # a black pixel (the most OD the LUT holds) must not wrap around
    return tile


def test_stain_transfer_at_zero_strength_is_the_identity() -> None:
    np.testing.assert_array_equal(stain_transfer(IMAGE, RGB_FROM_HED, np.zeros(3)), IMAGE)
    transform = StainTransfer(strength=0.0, p=1.0)
    for _ in range(5):
        np.testing.assert_array_equal(transform(image=IMAGE)["image"], IMAGE)


@pytest.mark.parametrize("stain", ["he", "pas"])
def test_stain_transfer_turns_dab_pink_and_keeps_glass_white(stain: str) -> None:
    transform = StainTransfer(strength=1.0, stains=(stain,), p=1.0)
    transform.set_random_seed(0)
    tile = _hpa_tile()
    for _ in range(20):
        out = transform(image=tile)["image"].astype(int)
        assert out.dtype == np.int64 and out.min() >= 0 and out.max() <= 255
        red, green, blue = out[8, 16]
        assert green < red and green < blue  # eosin / PAS absorb green: pink to magenta, no longer brown
        assert (np.abs(out[30, 30] - 245) <= 10).all()  # glass barely tinted: background stain goes on tissue only
        assert out[0, 0].max() < 60  # black stays dark instead of overflowing to white
        assert out[23, 16, 2] > out[23, 16, 1]  # hematoxylin nuclei stay blue-purple


def test_stain_transfer_leaves_masks_alone_and_returns_uint8() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compose = A.Compose([StainTransfer(p=1.0)])
    reseed(compose, 0)
    out = compose(image=IMAGE, mask=MASK)
    assert out["image"].dtype == np.uint8 and out["image"].shape == IMAGE.shape
    assert not np.array_equal(out["image"], IMAGE)
    np.testing.assert_array_equal(out["mask"], MASK)


def test_stain_transfer_rejects_unknown_stains_and_bad_ranges() -> None:
    with pytest.raises(ValueError, match="subset"):
        StainTransfer(stains=("he", "trichrome"))
    with pytest.raises(ValueError, match="dab_to_stain"):
        StainTransfer(dab_to_stain=(0.9, 0.2))
