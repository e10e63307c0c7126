"""Applying darks: PHD2's choice of dark and its pedestal subtraction."""

from __future__ import annotations

import numpy as np
import pytest

from phdserver.imaging import select_dark_exposure, subtract_dark


@pytest.mark.parametrize(
    ("exposure", "expected"),
    [
        (10, 1000),
        (1000, 1000),
        (1001, 2000),
        (1500, 2000),
        (2000, 2000),
        (4999, 5000),
        (5000, 5000),
        (6000, 5000),
        (600000, 5000),
    ],
)
def test_select_smallest_long_enough_else_longest(exposure: int, expected: int) -> None:
    assert select_dark_exposure([5000, 1000, 2000], exposure) == expected


def test_select_needs_darks() -> None:
    with pytest.raises(ValueError, match="no dark"):
        select_dark_exposure([], 1000)
    assert select_dark_exposure((300,), 1) == 300


def test_subtract_without_pedestal() -> None:
    light = np.array([[600, 620], [700, 5]], np.uint16)
    dark = np.array([[500, 500], [490, 20]], np.uint16)
    # median(dark) = 500 (rank 2 of 20 490 500 500) < median(light) = 620: no pedestal.
    assert subtract_dark(light, dark).tolist() == [[100, 120], [210, 0]]  # clipped at 0


def test_subtract_with_pedestal_and_clipping() -> None:
    light = np.array([[400, 450, 65535, 420]], np.uint16)
    dark = np.array([[300, 500, 0, 505]], np.uint16)
    # median(dark) = 500 (rank 2 of 0 300 500 505), median(light) = 450: pedestal 50.
    out = subtract_dark(light, dark)
    assert out.dtype == np.uint16
    assert out.tolist() == [[150, 0, 65535, 0]]  # 450+50-500, 65535+50 and 420+50-505 clip


def test_subtract_pedestal_values() -> None:
    light = np.array([[400, 410, 420, 430]], np.uint16)
    dark = np.array([[300, 500, 520, 530]], np.uint16)
    # median(dark) = 520, median(light) = 420 -> pedestal 100; out = light + 100 - dark.
    assert subtract_dark(light, dark).tolist() == [[200, 10, 0, 0]]
    saturating = np.array([[65535, 0, 0, 0]], np.uint16)
    assert subtract_dark(saturating, np.array([[0, 9, 9, 9]], np.uint16))[0, 0] == 65535


def test_subtract_validates_and_does_not_mutate() -> None:
    light = np.full((3, 4), 100, np.uint16)
    dark = np.full((3, 4), 50, np.uint16)
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(3, 4\)"):
        subtract_dark(light, np.zeros((4, 3), np.uint16))
    with pytest.raises(ValueError, match="uint16"):
        subtract_dark(light, dark.astype(np.float32))
    subtract_dark(light, dark)
    assert (light == 100).all()
    assert (dark == 50).all()
