"""RLE round trips: synthetic edge cases and the real competition strings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from inference.rle import decode, encode


def _reference_encode(mask: np.ndarray) -> str:
    """Textbook column-major encoder, written independently of inference.rle."""
    pixels = np.concatenate([[0], mask.T.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (5, 3), (3, 5), (64, 37), (160, 161)])
def test_random_masks_round_trip(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    mask = (rng.random(shape) > 0.6).astype(np.uint8)
    rle = encode(mask)
    assert rle == _reference_encode(mask)
    out = decode(rle, *shape)
    assert out.dtype == np.uint8 and out.shape == shape
    np.testing.assert_array_equal(out, mask)


def test_empty_and_full() -> None:
    assert encode(np.zeros((4, 6), np.uint8)) == ""
    assert encode(np.ones((4, 6), np.uint8)) == "1 24"
    np.testing.assert_array_equal(decode("", 4, 6), np.zeros((4, 6)))
    np.testing.assert_array_equal(decode("1 24", 4, 6), np.ones((4, 6)))


def test_column_major_order() -> None:
    # Pixel 2 is row 1, column 0 in a 3x2 image: numbering runs down the columns first.
    mask = decode("2 1", 3, 2)
    assert mask[1, 0] == 1 and mask.sum() == 1
    mask = np.zeros((3, 2), np.uint8)
    mask[0, 1] = 1  # column 1 starts at pixel 4
    assert encode(mask) == "4 1"


def test_runs_touching_edges() -> None:
    mask = np.zeros((4, 5), np.uint8)
    mask[:, 0] = 1  # first column: pixels 1..4
    mask[:, -1] = 1  # last column: pixels 17..20
    mask[3, 1] = mask[0, 2] = 1  # a run wrapping from the bottom of column 1 to the top of column 2
    assert encode(mask) == "1 4 8 2 17 4"
    np.testing.assert_array_equal(decode(encode(mask), 4, 5), mask)


def test_non_binary_values_count_as_foreground() -> None:
    mask = np.array([[0, 255], [3, 0]], dtype=np.uint8)
    assert encode(mask) == "2 2"


def test_decode_rejects_bad_strings() -> None:
    with pytest.raises(ValueError, match="odd number"):
        decode("1 2 3", 4, 4)
    with pytest.raises(ValueError, match="outside a 4x4 image"):
        decode("10 10", 4, 4)
    with pytest.raises(ValueError, match="out of order"):
        decode("5 2 1 2", 4, 4)


def test_encode_rejects_3d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        encode(np.zeros((2, 2, 3), np.uint8))


def test_real_strings_round_trip(real_fixtures) -> None:
    rows = pd.read_csv(real_fixtures / "train_rows_sample.csv")
    assert len(rows) == 71
    for r in rows.itertuples():
        mask = decode(r.rle, r.img_height, r.img_width)
        assert mask.shape == (r.img_height, r.img_width)
        assert encode(mask) == r.rle, f"round trip changed the RLE of id {r.id}"


def test_real_strings_are_not_transposed(real_fixtures) -> None:
    """A row-major decode of a real string gives a different mask: we must read columns first."""
    r = pd.read_csv(real_fixtures / "train_rows_sample.csv").iloc[0]
    mask = decode(r.rle, r.img_height, r.img_width)
    start, length = (int(v) for v in r.rle.split()[:2])
    row, col = (start - 1) % r.img_height, (start - 1) // r.img_height
    assert mask[row : row + min(length, r.img_height - row), col].all()
    assert not np.array_equal(mask, mask.T), "real masks are not symmetric, so a transposed decode would show"
