"""PHD2's truncated-window upper-median filter: the fast kernel equals the plain reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from phdserver.imaging import phd2_median_filter
from phdserver.imaging.median_filter import reference_median_filter

SHAPES = [(1, 1), (1, 40), (40, 1), (7, 9), (16, 16), (30, 31), (31, 31), (32, 33), (45, 70)]


def _check(image: np.ndarray, half_width: int = 15) -> None:
    expected = reference_median_filter(image, half_width)
    for workers in (1, 2, 3):
        result = phd2_median_filter(image, half_width, workers=workers)
        assert result.dtype == np.uint16
        np.testing.assert_array_equal(result, expected)


def test_reference_on_a_hand_computed_image() -> None:
    image = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 90]], np.uint16)
    # Corner (0,0) window {1,2,4,5}: rank 2 -> 4 (upper median). Edge (0,1): {1,2,3,4,5,6}
    # rank 3 -> 4. Centre: all nine, rank 4 -> 5. Edge (2,1): {4,5,6,7,8,90} -> 7.
    # Corner (2,2): {5,6,8,90} -> 8.
    expected = np.array([[4, 4, 5], [5, 5, 6], [7, 7, 8]], np.uint16)
    np.testing.assert_array_equal(reference_median_filter(image, 1), expected)
    np.testing.assert_array_equal(phd2_median_filter(image, 1), expected)


@pytest.mark.parametrize("shape", SHAPES)
def test_dark_like_images(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    image = (500 + rng.normal(0, 7, shape)).astype(np.uint16)
    hot = rng.random(shape) < 0.05
    image[hot] = 65535  # saturated hot pixels
    _check(image)


@pytest.mark.parametrize("shape", SHAPES)
def test_full_range_random_values(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    _check(rng.integers(0, 65536, shape, dtype=np.uint16))


@pytest.mark.parametrize("value", [0, 1, 500, 65535])
def test_constant_images(value: int) -> None:
    for shape in ((1, 1), (5, 64), (40, 33)):
        image = np.full(shape, value, np.uint16)
        np.testing.assert_array_equal(phd2_median_filter(image), image)


def test_stripes_that_flip_the_median_take_the_coarse_search() -> None:
    """Alternating 0/65535 columns move the median across the whole range at every pixel."""
    image = np.zeros((40, 64), np.uint16)
    image[:, 1::2] = 65535
    image[::7, ::5] = 30000
    _check(image)


@pytest.mark.parametrize("half_width", [0, 1, 2, 5, 16, 40])
def test_half_width(half_width: int) -> None:
    rng = np.random.default_rng(half_width)
    image = rng.integers(0, 2000, (23, 37), dtype=np.uint16)
    _check(image, half_width)


def test_half_width_zero_is_identity() -> None:
    image = np.arange(12, dtype=np.uint16).reshape(3, 4)
    np.testing.assert_array_equal(phd2_median_filter(image, 0), image)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.uint16,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24),
        elements=st.one_of(st.integers(0, 10), st.integers(0, 65535)),
    ),
    st.integers(0, 6),
)
def test_matches_reference(image: np.ndarray, half_width: int) -> None:
    np.testing.assert_array_equal(
        phd2_median_filter(image, half_width, workers=2),
        reference_median_filter(image, half_width),
    )


def test_input_untouched_and_views_accepted() -> None:
    rng = np.random.default_rng(2)
    base = rng.integers(0, 65536, (40, 50), dtype=np.uint16)
    copy = base.copy()
    view = base[3:35:2, 40:5:-3]  # non-contiguous, negative stride
    np.testing.assert_array_equal(
        phd2_median_filter(view, 4), reference_median_filter(view.copy(), 4)
    )
    np.testing.assert_array_equal(base, copy)


def test_empty_image() -> None:
    assert phd2_median_filter(np.zeros((0, 5), np.uint16)).shape == (0, 5)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="uint16"):
        phd2_median_filter(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="uint16"):
        phd2_median_filter(np.zeros((4, 4, 1), np.uint16))
    with pytest.raises(ValueError, match="half_width"):
        phd2_median_filter(np.zeros((4, 4), np.uint16), -1)
