"""Reading the controller's images from the shared directory: waiting for a complete file and
refusing anything but one 2-D image."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import trio
from astropy.io import fits

from phdserver.cameras.controller._transport import (
    ImageInvalid,
    ImageNotReady,
    ImageTimeout,
    read_fits_image,
    wait_for_image,
)


def fits_bytes(*hdus: fits.PrimaryHDU | fits.ImageHDU) -> bytes:
    out = io.BytesIO()
    fits.HDUList(list(hdus)).writeto(out)
    return out.getvalue()


FRAME = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 20 % 65536).astype(np.uint16)


def test_a_complete_image_is_read_with_its_keywords(tmp_path: Path) -> None:
    hdu = fits.PrimaryHDU(FRAME)
    hdu.header["IMAGETYP"] = "dark"
    path = tmp_path / "a.fits"
    path.write_bytes(fits_bytes(hdu))
    image = read_fits_image(path)
    assert image.data.dtype == np.uint16
    assert np.array_equal(image.data, FRAME)
    assert image.header["IMAGETYP"] == "dark"
    assert "NAXIS1" not in image.header


@pytest.mark.parametrize("cut", [0, 100, 2880, 2880 + 1000, -1])
def test_a_file_being_written_is_not_ready(tmp_path: Path, cut: int) -> None:
    data = fits_bytes(fits.PrimaryHDU(FRAME))
    path = tmp_path / "a.fits"
    path.write_bytes(data[:cut])
    with pytest.raises(ImageNotReady):
        read_fits_image(path)
    with pytest.raises(ImageNotReady, match="does not exist"):
        read_fits_image(tmp_path / "missing.fits")


def test_the_data_may_sit_in_an_extension_and_be_any_type(tmp_path: Path) -> None:
    path = tmp_path / "a.fits"
    floats = np.array([[-5.0, 1.4, 1.6, np.nan], [70000.0, 0.0, 2.5, 3.5]])
    path.write_bytes(fits_bytes(fits.PrimaryHDU(), fits.ImageHDU(floats)))
    image = read_fits_image(path)
    assert image.data.tolist() == [[0, 1, 2, 0], [65535, 0, 2, 4]]


@pytest.mark.parametrize(
    "hdus",
    [
        [fits.PrimaryHDU(np.zeros((2, 3, 4), np.uint16))],
        [fits.PrimaryHDU(FRAME), fits.ImageHDU(FRAME)],
        [fits.PrimaryHDU()],
    ],
    ids=["3-D", "two images", "no image"],
)
def test_anything_but_one_2d_image_is_invalid(
    tmp_path: Path, hdus: list[fits.PrimaryHDU | fits.ImageHDU]
) -> None:
    path = tmp_path / "a.fits"
    path.write_bytes(fits_bytes(*hdus))
    with pytest.raises(ImageInvalid, match="not a single 2-D image"):
        read_fits_image(path)


async def test_waiting_ends_when_the_file_is_complete(tmp_path: Path) -> None:
    data = fits_bytes(fits.PrimaryHDU(FRAME))
    path = tmp_path / "a.fits"
    async with trio.open_nursery() as nursery:

        async def write_slowly() -> None:
            await trio.sleep(0.05)
            await trio.to_thread.run_sync(path.write_bytes, data[: len(data) // 2])
            await trio.sleep(0.05)
            with path.open("ab") as f:
                f.write(data[len(data) // 2 :])

        nursery.start_soon(write_slowly)
        image = await wait_for_image(path, timeout_s=10, poll_s=0.005)
    assert np.array_equal(image.data, FRAME)


async def test_waiting_gives_up_saying_what_was_last_wrong(tmp_path: Path) -> None:
    path = tmp_path / "a.fits"
    path.write_bytes(fits_bytes(fits.PrimaryHDU(FRAME))[:4000])
    with pytest.raises(ImageTimeout, match=r"a\.fits was not ready within 0\.05 s: it is "
                                           r"incomplete \(4000 of 11520 bytes\)"):
        await wait_for_image(path, timeout_s=0.05, poll_s=0.01)
