"""Stain normalisation at inference: Macenko via torchstain, equal to torchstain's own, never raising on odd input."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

from inference.io import write_image
from inference.stain import (
    StainReference,
    fit_reference,
    image_stains,
    load_reference,
    macenko_reference,
    main,
    normalise_stain,
)

# Unit RGB optical-density vectors of the stains (Ruifrok & Johnston; Macenko's H&E reference for eosin).
HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
DAB = np.array([0.27, 0.57, 0.78])
EOSIN = np.array([0.2159, 0.8012, 0.5581])


def _two_stain_image(first: np.ndarray, second: np.ndarray, seed: int = 0, size: int = 96) -> np.ndarray:
    """A Beer-Lambert image: patches of each stain, their mixtures and bare glass."""
    rng = np.random.default_rng(seed)
    amounts = rng.uniform(0, 1.6, (size, size, 2)) * (rng.random((size, size, 2)) < 0.6)
    vectors = np.stack([first / np.linalg.norm(first), second / np.linalg.norm(second)])
    return np.clip(250 * np.exp(-(amounts @ vectors)), 0, 255).astype(np.uint8)


def _cosines(a: StainReference, b: StainReference) -> np.ndarray:
    unit = [m / np.linalg.norm(m, axis=0) for m in (a.stain_matrix, b.stain_matrix)]
    return (unit[0] * unit[1]).sum(0)


def test_fit_recovers_the_stain_vectors() -> None:
    truth = StainReference(np.stack([HEMATOXYLIN, DAB], 1) / np.linalg.norm([HEMATOXYLIN, DAB], axis=1), np.ones(2))
    fitted = fit_reference([_two_stain_image(HEMATOXYLIN, DAB, seed) for seed in range(3)])
    assert (_cosines(fitted, truth) > 0.99).all()


def test_normalise_equals_torchstains_normalize() -> None:
    image = _two_stain_image(HEMATOXYLIN, EOSIN)
    reference = fit_reference([_two_stain_image(HEMATOXYLIN, DAB, 1)])
    ours = normalise_stain(image, reference)
    theirs = NumpyMacenkoNormalizer()
    theirs.HERef, theirs.maxCRef = reference.stain_matrix, reference.max_concentrations
    expected, _, _ = theirs.normalize(image, stains=False)
    difference = np.abs(ours.astype(int) - expected)
    assert difference.max() <= 1 and (difference == 0).mean() > 0.99  # float32 against float64 rounding


def test_normalised_image_takes_the_reference_stains() -> None:
    reference = fit_reference([_two_stain_image(HEMATOXYLIN, DAB, 2)])
    he_image = _two_stain_image(HEMATOXYLIN, EOSIN, 3)
    assert _cosines(image_stains(he_image), reference)[1] < 0.97  # eosin is not DAB to begin with
    assert (_cosines(image_stains(normalise_stain(he_image, reference)), reference) > 0.99).all()


@pytest.mark.parametrize(
    "image",
    [
        np.full((64, 64, 3), 255, np.uint8),  # blank glass
        np.zeros((64, 64, 3), np.uint8),  # black
        np.full((64, 64, 3), 120, np.uint8),  # flat grey: one "stain"
        np.zeros((64, 64), np.uint8),  # grayscale
        np.zeros((64, 64, 4), np.uint8),  # RGBA
        np.zeros((64, 64, 3), np.float32),  # float
        np.zeros((0, 0, 3), np.uint8),  # empty
    ],
    ids=["white", "black", "grey", "2d", "rgba", "float", "empty"],
)
def test_unfit_images_come_back_unchanged_with_a_warning(image: np.ndarray, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="inference.stain"):
        assert normalise_stain(image, macenko_reference()) is image
    assert "stain normalisation skipped" in caplog.text


def test_reference_round_trip_and_cli(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    for seed in range(3):
        write_image(tmp_path / "images" / f"{seed}.tiff", _two_stain_image(HEMATOXYLIN, DAB, seed))
    main(["--images", str(tmp_path / "images"), "--out", str(tmp_path / "ref.json"), "--sample", "2"])
    loaded = load_reference(tmp_path / "ref.json")
    assert loaded.stain_matrix.shape == (3, 2) and (loaded.max_concentrations > 0).all()
    assert (_cosines(loaded, StainReference(np.stack([HEMATOXYLIN, DAB], 1), np.ones(2))) > 0.99).all()
    np.testing.assert_array_equal(load_reference("macenko").stain_matrix, macenko_reference().stain_matrix)
    with pytest.raises(FileNotFoundError, match="python -m inference.stain"):
        load_reference(tmp_path / "missing.json")
