"""FITS input and output for light calibration: lights and masters in, calibrated frames out.

Speed is the point of this module: the SPEC bar is end-to-end within 1.3× of copying the same
bytes. reference/calibration.md §2b measured astropy's path at 131 ms for a 4096² light against
~91 ms for the copy: astropy decodes the light (byte swap plus ``BZERO``, 29-39 ms) and
byte-swaps a copy of the float32 result on write (~19 ms). Here:

* the light is read a band of rows at a time as stored (:mod:`.calibration_input`, whose
  names are re-exported here); the byte swap and ``BZERO`` happen inside the calibration kernel
  (:func:`~phdserver.imaging.calibration.calibrate_fits16`), in the same pass as the arithmetic;
* :func:`write_calibrated_bands` writes the big-endian float32 bands the calibration produced
  (``out=`` a ``>f4`` band) as they come, after an astropy-built header whose quality figures
  are set once the last band is out: no whole-frame array on either side, so a 4096² light
  streams through the CPU cache in ~1 MiB bands (:data:`BAND_BYTES`) instead of through memory
  three times.

Originals are never written: :func:`write_calibrated` refuses an output path equal to its
input, and writes through :func:`~phdserver.library.atomic.create_exclusive` (never overwrite)
or :func:`~phdserver.library.atomic.atomic_write` (``overwrite``), so a crash leaves either no
output or a complete one. Synchronous; no trio.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
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
from phdserver.pipeline.calibration_input import (
    LightImage,
    LightReader,
    open_light,
    read_light,
    read_light_header,
    read_master,
)

__all__ = [
    "DEFAULT_SUFFIX",
    "SOFTWARE",
    "LightImage",
    "LightReader",
    "MasterUse",
    "Provenance",
    "band_rows",
    "calibrated_header",
    "existing_output_problem",
    "open_light",
    "output_path_for",
    "quality_cards",
    "read_light",
    "read_light_header",
    "read_master",
    "write_calibrated",
    "write_calibrated_bands",
]

DEFAULT_SUFFIX = "_calibrated"
SOFTWARE = f"phdserver {__version__}"
_BLOCK = 2880
BAND_BYTES = 1 << 20
"""Output bytes per band when a frame is calibrated and written band by band: 64 rows of a
4096-wide frame. Small enough that the band stays in the CPU cache between the kernel and the
``write`` (the whole-frame path streamed 96 MiB more through memory per 4096² light and was
about 25 % slower here, and slower still with two workers sharing the memory bus), large enough
that the per-band overhead (a ``preadv``, a ``write``, a kernel call) is noise."""
_WRITE_CHUNK = 1 << 20
"""Bytes per ``write`` call. Measured here: 64 MiB written in 1 MiB pieces took 18 ms (as fast
as ``shutil.copyfile``), in one call 150-200 ms most of the time (the kernel's dirty-page
throttling works per call); 64 KiB to 1 MiB pieces are all fast."""
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


def band_rows(width: int) -> int:
    """Rows per band for frames ``width`` pixels wide: about :data:`BAND_BYTES` of float32."""
    return max(1, BAND_BYTES // (4 * max(1, width)))


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
    cards += quality_cards(provenance.quality)
    for keyword, value, comment in cards:
        h.append((keyword, fits_text(value) if isinstance(value, str) else value, comment),
                 end=True)
    for step in provenance.steps:
        h.add_history(fits_text(f"{provenance.software}: {step}"))
    if dropped:
        h.add_history(f"unreadable input cards dropped: {', '.join(sorted(set(dropped)))}")
    return h


def quality_cards(quality: QualityFigures) -> list[FitsCard]:
    """The header cards of the quality figures (NaN as the text ``'NaN'``)."""
    q = quality
    return [
        ("CALMED", _finite(q.median), "median of the calibrated frame"),
        ("CALNOISE", _finite(q.noise), "robust noise, 1.4826 * MAD"),
        ("CALNEGFR", _finite(q.negative_fraction), "fraction of pixels below zero"),
        ("CALNANFR", _finite(q.nan_fraction), "fraction of NaN pixels"),
    ]


def write_calibrated(
    path: Path,
    data: np.ndarray,
    header: fits.Header,
    *,
    overwrite: bool = False,
    source: Path | None = None,
) -> None:
    """Write ``data`` (2-D float32, any byte order) under ``header`` as a single-HDU FITS file.

    The whole-frame form of :func:`write_calibrated_bands`, whose rules apply.
    """
    if data.ndim != 2 or data.dtype.kind != "f" or data.dtype.itemsize != 4:
        raise ValueError(f"data must be 2-D float32, got {data.dtype} {data.shape}")
    rows = band_rows(data.shape[1])
    bands = (data[start:start + rows] for start in range(0, data.shape[0], rows))
    write_calibrated_bands(path, (data.shape[0], data.shape[1]), bands, header,
                           overwrite=overwrite, source=source)


def write_calibrated_bands(
    path: Path,
    shape: tuple[int, int],
    bands: Iterable[np.ndarray],
    header: fits.Header,
    *,
    final_cards: Callable[[], Sequence[FitsCard]] | None = None,
    overwrite: bool = False,
    source: Path | None = None,
) -> None:
    """Write a float32 image of ``shape``, given as consecutive row ``bands``, as a FITS file.

    ``bands`` are 2-D float32 arrays of any byte order (``>f4`` is written without a copy),
    each consumed before the next is asked for, so a producer can reuse one buffer.
    ``header`` describes the image (:func:`calibrated_header`) and is written first.
    ``final_cards()``, called after the last band, gives new values for cards ``header``
    already has (the quality figures, known only once every band is out): they are set in
    ``header`` and it is written again over the first, at the same size. ``source`` is the
    light's path; writing onto it is refused.

    Raises
    ------
    FileExistsError
        ``path`` exists and not ``overwrite``; it is left untouched.
    LibraryError
        ``path`` is the light itself.
    ValueError
        A band is not float32 of the frame's width, the bands do not add up to ``shape``, or
        a final card was not in ``header`` or changed its size; nothing is left at ``path``.
    OSError
        The file could not be written; nothing is left at ``path`` (or the old file is intact).
    """
    path = Path(path)
    if source is not None and os.path.abspath(path) == os.path.abspath(source):
        raise LibraryError(f"Refusing to write the calibrated frame over its light {source}.")
    if (header.get("NAXIS1"), header.get("NAXIS2")) != (shape[1], shape[0]):
        raise ValueError("header NAXIS1/NAXIS2 do not match the data")

    def encoded(h: fits.Header) -> bytes:
        return h.tostring(sep="", endcard=True, padding=True).encode("ascii")

    def write(f: BinaryIO) -> None:
        head = encoded(header)
        f.write(head)
        rows = 0
        for band in bands:
            if band.ndim != 2 or band.shape[1] != shape[1] or band.dtype.kind != "f" or (
                    band.dtype.itemsize != 4):
                raise ValueError(f"a band must be 2-D float32 {shape[1]} wide, got "
                                 f"{band.dtype} {band.shape}")
            payload = band if band.dtype.str == ">f4" and band.flags.c_contiguous else (
                np.ascontiguousarray(band, dtype=">f4"))
            view = memoryview(payload.reshape(-1).view(np.uint8))
            for start in range(0, len(view), _WRITE_CHUNK):
                f.write(view[start:start + _WRITE_CHUNK])
            rows += band.shape[0]
        if rows != shape[0]:
            raise ValueError(f"the bands have {rows} rows, the image {shape[0]}")
        f.write(b"\0" * (-(shape[0] * shape[1] * 4) % _BLOCK))
        if final_cards is None:
            return
        final = header.copy()
        for keyword, value, comment in final_cards():
            if keyword not in final:
                raise ValueError(f"final card {keyword} has no room reserved in the header")
            final[keyword] = (fits_text(value) if isinstance(value, str) else value, comment)
        final_bytes = encoded(final)
        if len(final_bytes) != len(head):
            raise ValueError("the final header differs in size from the one reserved")
        f.seek(0)
        f.write(final_bytes)

    # Not fsynced: an output can be made again from its light and masters, and a per-file
    # fsync cost more than the calibration itself here. The rename is still atomic, and an
    # existing output counts as done only if it is complete (else a rerun reports it).
    (atomic_write if overwrite else create_exclusive)(path, write, durable=False)


def _finite(value: float) -> float | str:
    """FITS has no NaN header value; write the text ``'NaN'`` instead."""
    return value if np.isfinite(value) else "NaN"
