"""Our own test driver under real indiserver: dark frames show the planted hot pixels."""

from __future__ import annotations

import numpy as np
import pytest

from phdserver.cameras.base import FrameType, Subframe
from phdserver.cameras.indi import IndiCamera
from tests.indi.drivers import hotpixel_camera as driver

pytestmark = pytest.mark.indi

PLANTED = {(y, x) for y, x, _ in driver.HOT_PIXELS}


def hot(data: np.ndarray) -> set[tuple[int, int]]:
    """Pixels far above the frame's median (read noise is 3 ADU)."""
    median = float(np.median(data))
    return {(int(y), int(x)) for y, x in np.argwhere(data > median + 30 * driver.READ_NOISE_ADU)}


async def test_info_and_header(hotpixel_camera_connected: IndiCamera) -> None:
    info = hotpixel_camera_connected.info
    assert (info.width, info.height, info.pixel_size_um) == (640, 480, 3.75)
    assert info.has_cooler
    # defined late, after the rest of the driver's connect burst: connect waited for all of it
    assert info.gain_range == driver.GAIN_RANGE


async def test_dark_shows_the_planted_hot_pixels(hotpixel_camera_connected: IndiCamera) -> None:
    camera = hotpixel_camera_connected
    await camera.set_cooler(True, -6.0)  # the driver reaches its set point at once
    frame = await camera.capture(1000, frame_type=FrameType.DARK)
    assert frame.headers["FRAME"] == "Dark"
    assert frame.temperature_c == -6.0
    data = frame.data
    assert data.shape == (480, 640)
    assert hot(data) == PLANTED
    for y, x, rate in driver.HOT_PIXELS:
        expected = min(65535.0, driver.BIAS_ADU + rate * 1.0)
        assert abs(float(data[y, x]) - expected) < 10 * driver.READ_NOISE_ADU + 1
    assert data[479, 639] == 65535  # the saturating one
    # bias + dark current (0.25 ADU/s at -6 °C) under Gaussian read noise
    background = np.delete(data.ravel(), [y * 640 + x for y, x in PLANTED])
    assert abs(background.mean() - (driver.BIAS_ADU + 0.25)) < 0.1
    assert abs(background.std() - driver.READ_NOISE_ADU) < 0.1


async def test_binned_and_subframed_darks_keep_them_in_place(
    hotpixel_camera_connected: IndiCamera,
) -> None:
    camera = hotpixel_camera_connected
    binned = await camera.capture(500, frame_type=FrameType.DARK, binning=2)
    assert binned.data.shape == (240, 320)
    assert hot(binned.data) == {(y // 2, x // 2) for y, x in PLANTED}

    sub = Subframe(x=180, y=90, width=64, height=32)  # contains the hot pixel at (100, 200)
    frame = await camera.capture(500, frame_type=FrameType.DARK, subframe=sub)
    assert frame.data.shape == (32, 64)
    assert hot(frame.data) == {(100 - 90, 200 - 180)}
