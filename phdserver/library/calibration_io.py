"""FITS input and output for light calibration: lights and masters in, calibrated frames out.

Speed is the point of this module: the SPEC bar is end-to-end within 1.3× of copying the same
bytes. reference/calibration.md §2b measured astropy's path at 131 ms for a 4096² light against
~91 ms for the copy: astropy decodes the light (byte swap plus ``BZERO``, 29-39 ms) and
byte-swaps a copy of the float32 result on write (~19 ms). Here:

* :func:`read_light` reads a plain image HDU's *stored* values straight from the file
  (``>i2`` for BITPIX 16) after astropy has parsed the header; the byte swap and ``BZERO``
  happen inside the calibration kernel
  (:func:`~phdserver.imaging.calibration.calibrate_fits16`), in the same pass as the
  arithmetic;
* :func:`write_calibrated` writes a big-endian float32 array the calibration produced directly
  (``out=`` a ``>f4`` array), after an astropy-built header: no copy at all, in 1 MiB
  ``write`` calls (one 64 MiB call was up to 10× slower here).

Anything unusual (``BSCALE`` ≠ 1, other ``BZERO``, ``BLANK``, compressed or non-primary
images) goes through
astropy's own scaling instead: slower, never wrong.

Originals are never written: :func:`write_calibrated` refuses an output path equal to its
input, and writes through :func:`~phdserver.library.atomic.create_exclusive` (never overwrite)
or :func:`~phdserver.library.atomic.atomic_write` (``overwrite``), so a crash leaves either no
output or a complete one. Synchronous; no trio.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
from astropy.io import fits

from phdserver import __version__
from phdserver.errors import LibraryError
from phdserver.imaging.calibration import QualityFigures
from phdserver.library.atomic import atomic_write, create_exclusive
from phdserver.library.fits_frames import FitsCard, fits_text, open_fits

__all__ = [
    "DEFAULT_SUFFIX",
    "SOFTWARE",
    "LightImage",
    "MasterUse",
    "Provenance",
    "calibrated_header",
    "existing_output_problem",
    "output_path_for",
    "read_light",
    "read_light_header",
    "read_master",
    "write_calibrated",
]

DEFAULT_SUFFIX = "_calibrated"
SOFTWARE = f"phdserver {__version__}"
_BLOCK = 2880
_WRITE_CHUNK = 1 << 20
"""Bytes per ``write`` call. Measured here: 64 MiB written in 1 MiB pieces took 18 ms (as fast
as ``shutil.copyfile``), in one call 150-200 ms most of the time (the kernel's dirty-page
throttling works per call); 64 KiB to 1 MiB pieces are all fast."""
_STORED_DTYPES = {8: np.dtype("u1"), 16: np.dtype(">i2"), 32: np.dtype(">i4"),
                  -32: np.dtype(">f4"), -64: np.dtype(">f8")}
# Cards that describe the *stored* array; the output's own replace them.
_STRUCTURAL = frozenset({
    "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT", "BZERO", "BSCALE",
    "BLANK", "CHECKSUM", "DATASUM", "END", "GROUPS", "ZIMAGE", "ZBITPIX", "ZCMPTYPE", "ZTENSION",
})
# Our provenance keywords: dropped from the input header so an output never carries two.
_PROVENANCE = frozenset({
    "CALIBRAT", "CALDATE", "CALSOFT", "CALHASH", "BIASMAST", "DARKMAST", "FLATMAST", "BIASHASH",
    "DARKHASH", "FLATHASH", "DARKSCAL", "FLATMED", "CALNBADF", "CALMED", "CALNOISE",
    "CALNEGFR", "CALNANFR",
})


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


@dataclass(frozen=True, slots=True, kw_only=True)
class MasterUse:
    """One master applied to a light, as the output header records it."""

    kind: str
    """``"bias"``, ``"dark"`` or ``"flat"``: the keyword prefix ``BIAS``/``DARK``/``FLAT``."""
    name: str
    checksum: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Provenance:
    """Everything the calibrated header says about how the frame was made."""

    masters: tuple[MasterUse, ...]
    steps: tuple[str, ...]
    quality: QualityFigures
    dark_scale: float | None = None
    flat_median: float | None = None
    bad_flat_pixels: int = 0
    software: str = SOFTWARE
    date: datetime | None = None
    """When calibrated (UTC); now when None."""


def output_path_for(light: Path, *, output_dir: Path | None, suffix: str = DEFAULT_SUFFIX) -> Path:
    """``<output_dir or the light's directory>/<stem><suffix>.fits``."""
    light = Path(light)
    name = light.name
    for ending in (".fz", ".gz"):
        name = name.removesuffix(ending)
    stem = name
    for ending in (".fits", ".fit", ".fts", ".FITS", ".FIT", ".FTS"):
        if stem.endswith(ending):
            stem = stem[: -len(ending)]
            break
    return (Path(output_dir) if output_dir is not None else light.parent) / f"{stem}{suffix}.fits"


def read_light(path: Path, *, buffer: np.ndarray | None = None) -> LightImage:
    """Read the first 2-D image of ``path`` (see the module docstring for the fast path).

    ``buffer``: a 1-D array to read the stored values into when it has their dtype and size
    (a worker reuses one per thread: a fresh 32 MiB array costs ~5 ms of page faults per
    4096² light); the returned ``data`` is then a view of it, valid until its next use.

    Raises
    ------
    LibraryError
        Missing, truncated or corrupt file, or no 2-D image in it.
    """
    path = Path(path)
    with open_fits(path, "Light frame") as hdul:
        index = _image_index(path, hdul)
        hdu = hdul[index]
        header = hdu.header.copy()
        bitpix = header.get("BITPIX")
        zero = header.get("BZERO", 0)
        plain = (
            index == 0
            and isinstance(hdu, fits.PrimaryHDU)
            and bitpix in _STORED_DTYPES
            and header.get("BSCALE", 1) == 1
            and "BLANK" not in header
            and (zero == 0 or (bitpix == 16 and zero == 32768))
        )
        if not plain:
            data = np.asarray(hdu.data, dtype=np.float32)
            return LightImage(data=data, zero=0, header=header)
        offset = int(hdul.fileinfo(index)["datLoc"])
    shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
    dtype = _STORED_DTYPES[bitpix]
    count = shape[0] * shape[1]
    reuse = buffer is not None and buffer.dtype == dtype and buffer.shape == (count,)
    data = buffer if reuse else np.empty(count, dtype)
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            got = f.readinto(memoryview(data.view(np.uint8)))
    except OSError as exc:
        raise LibraryError(f"Cannot read light frame {path}: {exc}.") from exc
    if got != data.nbytes:
        raise LibraryError(f"Light frame {path} is truncated.")
    return LightImage(data=data.reshape(shape), zero=int(zero), header=header)


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


def existing_output_problem(path: Path) -> str | None:
    """Why the file at ``path`` is not a complete calibrated frame; None when it is one.

    A batch skips outputs that exist; this makes sure what it skips is really finished work:
    a complete FITS file (as long as its header says) with ``CALIBRAT = T``. Anything else (a
    file cut short by a crash or a full disk, someone else's file) is reported, never skipped
    silently and never overwritten unless the caller asks.
    """
    try:
        with open_fits(Path(path), "Output") as hdul:
            calibrated = hdul[0].header.get("CALIBRAT") is True
    except LibraryError as exc:
        return exc.message
    return None if calibrated else "it is not a calibrated frame (no CALIBRAT = T)"


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


def calibrated_header(
    original: fits.Header, shape: tuple[int, int], provenance: Provenance
) -> fits.Header:
    """The output header: the light's own cards, then our provenance, quality and HISTORY.

    The cards describing the stored array (``BITPIX``, ``BZERO``, ``CHECKSUM``...) are replaced
    by those of a float32 image; every other card of the light is kept as it was (a card astropy
    cannot parse is repaired as its ``silentfix`` does, or dropped with a ``HISTORY`` note).
    """
    h = fits.Header()
    h["SIMPLE"] = (True, "conforms to FITS standard")
    h["BITPIX"] = (-32, "32-bit IEEE float")
    h["NAXIS"] = (2, "number of array dimensions")
    h["NAXIS1"] = shape[1]
    h["NAXIS2"] = shape[0]
    dropped: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for card in original.cards:
            keyword = card.keyword
            if keyword in _STRUCTURAL or keyword in _PROVENANCE or keyword.startswith("NAXIS"):
                continue
            try:
                card.verify("silentfix")
                _ = card.image
                h.append(card, end=True)
            except Exception:  # astropy raises several types for a broken card
                dropped.append(keyword)
    date = (provenance.date or datetime.now(UTC)).astimezone(UTC)
    cards: list[FitsCard] = [
        ("CALIBRAT", True, "calibrated light frame"),
        ("CALDATE", date.strftime("%Y-%m-%dT%H:%M:%S"), "UTC time of calibration"),
        ("CALSOFT", provenance.software, "calibration software"),
    ]
    if provenance.masters:
        cards.append(("CALHASH", "SHA-256", "algorithm of the *HASH master checksums"))
    for use in provenance.masters:
        prefix = use.kind.upper()[:4]
        cards.append((f"{prefix}MAST", use.name, f"master {use.kind} applied"))
        cards.append((f"{prefix}HASH", use.checksum, ""))  # 64 hex digits leave no room
    if provenance.dark_scale is not None:
        cards.append(("DARKSCAL", float(provenance.dark_scale), "dark scaled by t_light/t_dark"))
    if provenance.flat_median is not None:
        cards.append(("FLATMED", float(provenance.flat_median), "median of the master flat"))
        cards.append(("CALNBADF", int(provenance.bad_flat_pixels),
                      "flat pixels <= 0 or non-finite, set to NaN"))
    q = provenance.quality
    cards += [
        ("CALMED", _finite(q.median), "median of the calibrated frame"),
        ("CALNOISE", _finite(q.noise), "robust noise, 1.4826 * MAD"),
        ("CALNEGFR", _finite(q.negative_fraction), "fraction of pixels below zero"),
        ("CALNANFR", _finite(q.nan_fraction), "fraction of NaN pixels"),
    ]
    for keyword, value, comment in cards:
        h.append((keyword, fits_text(value) if isinstance(value, str) else value, comment),
                 end=True)
    for step in provenance.steps:
        h.add_history(fits_text(f"{provenance.software}: {step}"))
    if dropped:
        h.add_history(f"unreadable input cards dropped: {', '.join(sorted(set(dropped)))}")
    return h


def write_calibrated(
    path: Path,
    data: np.ndarray,
    header: fits.Header,
    *,
    overwrite: bool = False,
    source: Path | None = None,
) -> None:
    """Write ``data`` (2-D float32, any byte order) under ``header`` as a single-HDU FITS file.

    ``header`` must describe ``data`` (from :func:`calibrated_header`). ``source`` is the
    light's path; writing onto it is refused.

    Raises
    ------
    FileExistsError
        ``path`` exists and not ``overwrite``; it is left untouched.
    LibraryError
        ``path`` is the light itself.
    OSError
        The file could not be written; nothing is left at ``path`` (or the old file is intact).
    """
    path = Path(path)
    if source is not None and os.path.abspath(path) == os.path.abspath(source):
        raise LibraryError(f"Refusing to write the calibrated frame over its light {source}.")
    if data.ndim != 2 or data.dtype.kind != "f" or data.dtype.itemsize != 4:
        raise ValueError(f"data must be 2-D float32, got {data.dtype} {data.shape}")
    if (header.get("NAXIS1"), header.get("NAXIS2")) != (data.shape[1], data.shape[0]):
        raise ValueError("header NAXIS1/NAXIS2 do not match the data")
    payload = data if data.dtype.str == ">f4" and data.flags.c_contiguous else (
        np.ascontiguousarray(data, dtype=">f4"))
    head = header.tostring(sep="", endcard=True, padding=True).encode("ascii")
    padding = b"\0" * (-payload.nbytes % _BLOCK)

    def write(f: BinaryIO) -> None:
        f.write(head)
        view = memoryview(payload.reshape(-1).view(np.uint8))
        for start in range(0, len(view), _WRITE_CHUNK):
            f.write(view[start:start + _WRITE_CHUNK])
        f.write(padding)

    # Not fsynced: an output can be made again from its light and masters, and a per-file
    # fsync cost more than the calibration itself here. The rename is still atomic, and an
    # existing output counts as done only if it is complete (else a rerun reports it).
    (atomic_write if overwrite else create_exclusive)(path, write, durable=False)


def _image_index(path: Path, hdul: fits.HDUList) -> int:
    for index, hdu in enumerate(hdul):
        if hdu.header.get("NAXIS") == 2 and hdu.header.get("NAXIS1") and not isinstance(
            hdu, fits.GroupsHDU | fits.BinTableHDU | fits.TableHDU
        ):
            return index
    raise LibraryError(f"Light frame {path} has no 2-D image.")


def _finite(value: float) -> float | str:
    """FITS has no NaN header value; write the text ``'NaN'`` instead."""
    return value if np.isfinite(value) else "NaN"

