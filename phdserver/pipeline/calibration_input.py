"""Reading lights and masters for calibration: a light band by band, a master whole.

:class:`LightReader` (:func:`open_light`) reads a plain image HDU's *stored* values straight
from the file (``>i2`` for BITPIX 16) after astropy has parsed the header, a band of rows at a
time with ``os.preadv`` into one reused buffer; the byte swap and ``BZERO`` happen inside the
calibration kernel (:func:`~phdserver.imaging.calibration.calibrate_fits16`), in the same pass
as the arithmetic. Anything unusual (``BSCALE`` ≠ 1, other ``BZERO``, ``BLANK``, compressed or
non-primary images) is decoded whole by astropy instead: slower, never wrong. Synchronous; no
trio. The output side is :mod:`.calibration_io`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from phdserver.errors import LibraryError
from phdserver.library.fits_frames import open_fits

__all__ = [
    "LightImage",
    "LightReader",
    "open_light",
    "read_light",
    "read_light_header",
    "read_master",
]

_STORED_DTYPES = {8: np.dtype("u1"), 16: np.dtype(">i2"), 32: np.dtype(">i4"),
                  -32: np.dtype(">f4"), -64: np.dtype(">f8")}


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class LightImage:
    """A light as read: ``data + zero`` is the physical value of each pixel."""

    data: np.ndarray
    """2-D values as stored in the file (``>i2`` for BITPIX 16, ``>f4``, ``u1``...), or
    physical float32 from astropy for anything unusual (then ``zero`` is 0)."""
    zero: int
    """0, or 32768 for BITPIX 16 unsigned data."""
    header: fits.Header
    """A copy of the image HDU's header."""


class LightReader:
    """A light opened for calibration: its header, its shape and its rows, band by band.

    For a plain image HDU (see the module docstring) the rows come straight from the file as
    stored (``>i2`` for BITPIX 16, with :attr:`zero` to add), read with ``os.preadv`` into one
    reused band buffer; anything unusual is decoded whole by astropy into physical float32 when
    opened. Use as a context manager (:func:`open_light`); it holds the file open.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._decoded: np.ndarray | None = None
        self._buffer: np.ndarray | None = None
        with open_fits(self.path, "Light frame") as hdul:
            index = _image_index(self.path, hdul)
            hdu = hdul[index]
            self.header: fits.Header = hdu.header.copy()
            """A copy of the image HDU's header."""
            bitpix = self.header.get("BITPIX")
            zero = self.header.get("BZERO", 0)
            plain = (
                index == 0
                and isinstance(hdu, fits.PrimaryHDU)
                and bitpix in _STORED_DTYPES
                and self.header.get("BSCALE", 1) == 1
                and "BLANK" not in self.header
                and (zero == 0 or (bitpix == 16 and zero == 32768))
            )
            self.shape = (int(self.header["NAXIS2"]), int(self.header["NAXIS1"]))
            if not plain:
                self._decoded = np.asarray(hdu.data, dtype=np.float32)
                self.zero = 0
                """0, or 32768 for BITPIX 16 unsigned data: add it to a stored value."""
                self.dtype = self._decoded.dtype
                """The dtype :meth:`read_rows` returns."""
                return
            self._offset = int(hdul.fileinfo(index)["datLoc"])
        self.zero = int(zero)
        self.dtype = _STORED_DTYPES[bitpix]
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise LibraryError(f"Cannot read light frame {self.path}: {exc.strerror}.") from exc

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as stored (or decoded); valid until the next call.

        Raises
        ------
        LibraryError
            The file could not be read or became shorter since it was opened.
        """
        if not 0 <= start < stop <= self.shape[0]:
            raise ValueError(f"rows {start}:{stop} are not within 0:{self.shape[0]}")
        if self._decoded is not None:
            return self._decoded[start:stop]
        if self._fd is None:
            raise ValueError("the light is closed")
        width = self.shape[1]
        count = (stop - start) * width
        if self._buffer is None or self._buffer.size < count:
            self._buffer = np.empty(count, self.dtype)
        data = self._buffer[:count]
        position = self._offset + start * width * self.dtype.itemsize
        try:
            got = os.preadv(self._fd, [memoryview(data.view(np.uint8))], position)
        except OSError as exc:
            raise LibraryError(f"Cannot read light frame {self.path}: {exc.strerror}.") from exc
        if got != data.nbytes:
            raise LibraryError(f"Light frame {self.path} is truncated.")
        return data.reshape(stop - start, width)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> LightReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_light(path: Path) -> LightReader:
    """Open the first 2-D image of ``path`` for calibration (close it, or use ``with``).

    Raises
    ------
    LibraryError
        Missing, truncated or corrupt file, or no 2-D image in it.
    """
    return LightReader(path)


def read_light(path: Path) -> LightImage:
    """The whole first 2-D image of ``path``, as :class:`LightReader` reads it.

    Raises
    ------
    LibraryError
        Missing, truncated or corrupt file, or no 2-D image in it.
    """
    with open_light(path) as light:
        # The reader's buffer (or decoded array) is this call's own: no copy is needed.
        data = light.read_rows(0, light.shape[0])
        return LightImage(data=data, zero=light.zero, header=light.header)


def read_light_header(path: Path) -> fits.Header:
    """A copy of the header of the first 2-D image of ``path`` (what :func:`read_light` reads).

    Raises
    ------
    LibraryError
        Missing, truncated or corrupt file, or no 2-D image in it.
    """
    path = Path(path)
    with open_fits(path, "Light frame") as hdul:
        return hdul[_image_index(path, hdul)].header.copy()


def read_master(path: Path, hdu: int = 0) -> tuple[np.ndarray, fits.Header]:
    """A master frame's physical values as float32, and a copy of its header.

    Raises
    ------
    LibraryError
        Missing, truncated or corrupt file; no such HDU, or not a 2-D image.
    """
    path = Path(path)
    with open_fits(path, "Master frame") as hdul:
        if not 0 <= hdu < len(hdul) or hdul[hdu].header.get("NAXIS") != 2:
            raise LibraryError(f"Master frame {path}#{hdu} is not a 2-D image.")
        data = np.asarray(hdul[hdu].data, dtype=np.float32)
        return data, hdul[hdu].header.copy()


def _image_index(path: Path, hdul: fits.HDUList) -> int:
    for index, hdu in enumerate(hdul):
        if hdu.header.get("NAXIS") == 2 and hdu.header.get("NAXIS1") and not isinstance(
            hdu, fits.GroupsHDU | fits.BinTableHDU | fits.TableHDU
        ):
            return index
    raise LibraryError(f"Light frame {path} has no 2-D image.")
