"""Decoding image BLOBs: FITS flavours, bit depths, row order and refusals."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from astropy.io import fits

from phdserver.cameras.indi._blob import decode_image
from phdserver.errors import CameraError


def fits_file(data: np.ndarray, **cards: object) -> bytes:
    hdu = fits.PrimaryHDU(data)
    for key, value in cards.items():
        hdu.header[key] = value
    out = io.BytesIO()
    hdu.writeto(out)
    return out.getvalue()


def ramp(dtype: type, height: int = 6, width: int = 4) -> np.ndarray:
    return np.arange(height * width, dtype=dtype).reshape(height, width)


def test_uint16_with_header() -> None:
    data = ramp(np.uint16) * 1000
    image = decode_image(fits_file(data, FRAME="Dark", EXPTIME=1.5), ".fits", device="Cam")
    assert image.data.dtype == np.uint16
    assert image.data.flags.c_contiguous
    np.testing.assert_array_equal(image.data, data)
    assert image.bits_per_pixel == 16
    assert image.header["FRAME"] == "Dark"
    assert image.header["EXPTIME"] == 1.5
    assert "BITPIX" not in image.header
    assert "NAXIS1" not in image.header


def test_8_bit_keeps_its_values() -> None:
    data = ramp(np.uint8) * 10
    image = decode_image(fits_file(data), ".fits", device="Cam")
    assert image.bits_per_pixel == 8
    assert image.data.dtype == np.uint16
    np.testing.assert_array_equal(image.data, data)


def test_floats_and_signed_are_clipped() -> None:
    data = np.array([[-5.0, 1.4], [70000.0, np.nan]], dtype=np.float32)
    image = decode_image(fits_file(data), ".fits", device="Cam")
    np.testing.assert_array_equal(image.data, [[0, 1], [65535, 0]])
    signed = decode_image(fits_file(np.array([[-3, 7]], dtype=np.int32)), ".fits", device="Cam")
    np.testing.assert_array_equal(signed.data, [[0, 7]])


def test_zlib_compressed_blob() -> None:
    data = ramp(np.uint16)
    image = decode_image(zlib.compress(fits_file(data)), ".fits.z", device="Cam")
    np.testing.assert_array_equal(image.data, data)


def test_bottom_up_rows_are_flipped() -> None:
    data = ramp(np.uint16)
    image = decode_image(fits_file(data, ROWORDER="BOTTOM-UP"), ".fits", device="Cam")
    np.testing.assert_array_equal(image.data, data[::-1])


@pytest.mark.parametrize(
    ("payload", "fmt", "message"),
    [
        (fits_file(ramp(np.uint16)), ".jpg", "only FITS"),
        (fits_file(np.zeros((2, 3, 4), np.uint16)), ".fits", "3-D"),
        (b"SIMPLE  = nonsense", ".fits", "unreadable"),
        (b"not zlib", ".fits.z", "corrupt"),
    ],
)
def test_refusals_name_the_device(payload: bytes, fmt: str, message: str) -> None:
    with pytest.raises(CameraError, match=message) as info:
        decode_image(payload, fmt, device="My Cam")
    assert "INDI: 'My Cam'" in info.value.message
