"""Single-image FITS files as PHD2's ``usImage::Save`` writes them, and safe FITS opening.

The defect map keeps its master dark and the median-filtered master beside the ``.txt`` map
(reference/phd2.md §3 "Files"); PHD2 checks the master's size before it trusts the map, so these
files must be PHD2's single ``USHORT`` HDU with PHD2's keywords. The keyword set follows
``usImage::Save`` minus what a headless daemon cannot know (``SCALE``/``PIXSCALE``: no pixel
scale; ``RA``/``DEC``: no mount; lock position, subframe).

:func:`open_fits` is the one way this package opens a FITS file for reading: a missing, truncated
or corrupt file becomes a :class:`~phdserver.errors.LibraryError` with a message for a person,
never an astropy or OS exception. astropy tolerates a truncated file (it warns and reads what is
there), so completeness is checked against the size the headers announce.

All functions are synchronous; async callers use ``trio.to_thread``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
from astropy.io import fits

from phdserver.errors import LibraryError
from phdserver.library.atomic import atomic_write, create_exclusive

__all__ = [
    "FitsCard",
    "as_uint16",
    "fits_text",
    "open_fits",
    "read_master_frame",
    "write_hdus",
    "write_master_frame",
]

FitsCard = tuple[str, bool | int | float | str, str]
"""``(keyword, value, comment)`` for one extra header card."""

_FITS_BLOCK = 2880


def fits_text(value: str) -> str:
    """``value`` as a FITS header string: non-printable or non-ASCII characters become ``?``.

    Free text such as a camera name comes from drivers; FITS headers only hold printable ASCII
    (astropy refuses anything else), and ``?`` is what astropy shows for such bytes on reading.
    """
    return "".join(c if " " <= c <= "~" else "?" for c in value)


def as_uint16(data: np.ndarray) -> np.ndarray:
    """Pixel values as ``uint16``, the way cfitsio's ``TUSHORT`` read converts them.

    ``uint16`` data (BITPIX 16 with BZERO 32768) pass through; other types are rounded and
    clipped to 0..65535, non-finite values becoming 0.
    """
    if data.dtype == np.uint16:
        return np.ascontiguousarray(data)
    if np.issubdtype(data.dtype, np.floating):
        data = np.nan_to_num(np.rint(data), nan=0.0, posinf=65535.0, neginf=0.0)
    return np.clip(data, 0, 65535).astype(np.uint16)


@contextmanager
def open_fits(path: Path, what: str) -> Iterator[fits.HDUList]:
    """Open ``path`` for reading with every HDU's header loaded and the file checked complete.

    ``what`` names the file for messages ("Dark library"). Exceptions raised by astropy, or by
    the body of the ``with`` block while reading data, become :class:`LibraryError`;
    ``LibraryError`` and ``MemoryError`` pass unchanged.
    """
    path = Path(path)
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise LibraryError(f"{what} {path} does not exist.") from None
    except OSError as exc:
        raise LibraryError(f"Cannot read {what.lower()} {path}: {exc.strerror}.") from exc
    try:
        with fits.open(path, mode="readonly", memmap=False, lazy_load_hdus=False) as hdul:
            _check_complete(path, hdul, size, what)
            yield hdul
    except (LibraryError, MemoryError):
        raise
    except Exception as exc:
        raise LibraryError(f"{what} {path} is not a readable FITS file ({exc}).") from exc


def _check_complete(path: Path, hdul: fits.HDUList, size: int, what: str) -> None:
    """Refuse a file shorter than its headers announce, or cut inside a following header."""
    if len(hdul) == 0:
        raise LibraryError(f"{what} {path} is empty or not a FITS file.")
    info = hdul.fileinfo(len(hdul) - 1)
    end = int(info["datLoc"]) + int(info["datSpan"])
    if size < end:
        raise LibraryError(
            f"{what} {path} is truncated ({size} bytes, its headers announce {end})."
        )
    if size > end:
        with open(path, "rb") as f:
            f.seek(end)
            if f.read(8) == b"XTENSION":
                raise LibraryError(f"{what} {path} is truncated inside an extension header.")


def write_hdus(
    path: Path, hdus: Sequence[fits.PrimaryHDU | fits.ImageHDU], *, exclusive: bool = False
) -> None:
    """Write ``hdus`` (primary first) to ``path`` with :func:`atomic_write`, or with
    :func:`create_exclusive` when ``exclusive`` (then ``FileExistsError`` if ``path`` exists)."""
    hdul = fits.HDUList(list(hdus))

    def write(f: BinaryIO) -> None:
        try:
            hdul.writeto(f, output_verify="exception")
        except AttributeError as exc:
            # astropy (7.x) meets a failed write (a full disk) with a free-space check that
            # itself fails with an AttributeError; the OSError underneath is the real error.
            if isinstance(exc.__context__, OSError):
                raise exc.__context__ from None
            raise

    (create_exclusive if exclusive else atomic_write)(Path(path), write)


def write_master_frame(
    path: Path,
    data: np.ndarray,
    *,
    exposure_ms: int,
    frame_count: int = 1,
    note: str = "",
    creator: str,
    profile_id: int,
    profile_name: str | None = None,
    binning: int = 1,
    bits_per_pixel: int = 16,
    gain: int = 0,
    camera: str | None = None,
    pixel_size_um: float | None = None,
    date_obs: str | None = None,
    extra_cards: Sequence[FitsCard] = (),
    exclusive: bool = False,
) -> None:
    """Write one ``uint16`` image as a single-HDU FITS file in PHD2's ``usImage::Save`` form.

    Parameters
    ----------
    path
        Target file, replaced atomically.
    data
        2-D ``uint16`` image, ``data[y, x]``.
    exposure_ms
        Exposure of each frame; written as ``EXPOSURE`` in seconds.
    frame_count
        Frames averaged into ``data``; ``STACKCNT`` is written when it is above 1, as PHD2 does.
    note
        ``USERNOTE``, written when non-empty (printable ASCII).
    creator
        ``CREATOR``, e.g. ``"phdserver 0.1.0"``.
    profile_id, profile_name
        ``PHDPROFI``: PHD2 writes the profile *name* there; we write ``profile_name`` when
        given, else the numeric id as a string.
    binning
        Hardware binning: ``XBINNING``, ``YBINNING``, ``CCDXBIN``, ``CCDYBIN``.
    bits_per_pixel
        ``CAMBPP``, and ``SATURATE = 2**bits_per_pixel - 1``.
    gain
        ``GAIN`` (PHD2's 0..100 gain value).
    camera
        ``INSTRUME``, when known.
    pixel_size_um
        The sensor's *unbinned* pixel size; like PHD2 we write ``binning * pixel_size_um`` as
        ``XPIXSZ``/``YPIXSZ`` ("with binning").
    date_obs
        ``DATE-OBS``, ISO 8601 UTC start of the first exposure, when known.
    extra_cards
        Further ``(keyword, value, comment)`` cards (provenance), appended in order.
    exclusive
        Never overwrite: create ``path`` with :func:`create_exclusive` (for a file name a
        client chose); otherwise replace it with :func:`atomic_write`.

    Raises
    ------
    ValueError
        ``data`` is not 2-D ``uint16``, or a value cannot be written.
    FileExistsError
        ``exclusive`` and ``path`` exists; it is left untouched.
    OSError
        The file could not be written; any previous file is left intact.
    """
    _check_image(data)
    if not 1 <= bits_per_pixel <= 16:
        raise ValueError(f"bits_per_pixel must be 1..16, got {bits_per_pixel}")
    hdu = fits.PrimaryHDU(data=data)
    h = hdu.header
    h["EXPOSURE"] = (exposure_ms / 1000.0, "Exposure time in seconds")
    if frame_count > 1:
        h["STACKCNT"] = (int(frame_count), "Stacked frame count")
    if note:
        if fits_text(note) != note:
            raise ValueError("note must be printable ASCII")
        h["USERNOTE"] = note
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    h["DATE"] = (now, "file creation time, UTC")
    if date_obs is not None:
        h["DATE-OBS"] = (fits_text(date_obs), "Image capture start time, UTC")
    h["CREATOR"] = (fits_text(creator), "Capture software")
    profile = profile_name if profile_name is not None else str(profile_id)
    h["PHDPROFI"] = (fits_text(profile), "PHD2 Equipment Profile")
    if camera is not None:
        h["INSTRUME"] = (fits_text(camera), "Instrument name")
    for key, axis in (("XBINNING", "X"), ("YBINNING", "Y"), ("CCDXBIN", "X"), ("CCDYBIN", "Y")):
        h[key] = (int(binning), f"Camera {axis} Bin")
    if pixel_size_um is not None:
        size = float(binning * pixel_size_um)
        h["XPIXSZ"] = (size, "pixel size in microns (with binning)")
        h["YPIXSZ"] = (size, "pixel size in microns (with binning)")
    h["GAIN"] = (int(gain), "PHD Gain Value (0-100)")
    h["CAMBPP"] = (int(bits_per_pixel), "Camera resolution, bits per pixel")
    h["SATURATE"] = ((1 << bits_per_pixel) - 1, "Data value at which saturation occurs")
    for key, value, comment in extra_cards:
        h[key] = (fits_text(value) if isinstance(value, str) else value, comment)
    write_hdus(path, [hdu], exclusive=exclusive)


def read_master_frame(path: Path) -> tuple[np.ndarray, fits.Header]:
    """Read a single-HDU master frame written by :func:`write_master_frame` or by PHD2.

    Like PHD2's ``usImage::Load``, the file must hold exactly one 2-D image.

    Returns
    -------
    data : numpy.ndarray
        ``uint16`` image, ``data[y, x]``.
    header : astropy.io.fits.Header
        A copy of its header.

    Raises
    ------
    LibraryError
        Missing, truncated or corrupt file, or not a single 2-D image.
    """
    with open_fits(path, "Master frame") as hdul:
        hdu = hdul[0]
        if len(hdul) != 1 or hdu.header.get("NAXIS") != 2 or isinstance(hdu, fits.GroupsHDU):
            raise LibraryError(f"Unsupported type or read error loading FITS file {path}")
        data = as_uint16(hdu.data)
        return data, hdu.header.copy()


def _check_image(data: np.ndarray) -> None:
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.dtype != np.uint16:
        raise ValueError(
            "a frame must be a 2-D uint16 array, got "
            f"{getattr(data, 'dtype', type(data))} {getattr(data, 'shape', '')}"
        )
    if data.size == 0:
        raise ValueError("a frame must not be empty")
