"""What a FITS header says about a frame: one :class:`FrameMetadata` record, synonyms resolved.

Capture programs disagree on keyword names (``EXPTIME`` or ``EXPOSURE``, ``SET-TEMP`` or
``SETTEMP``, ``XBINNING`` or ``BINX``), on value types (``GAIN = 100`` or ``GAIN = '100'``) and on
frame-type spellings (``'Dark Frame'``, ``'DARK'``, ``'Master Dark'``, ``'masterDark'``). Tools
that compare these as strings (reference/calibration.md §1) miss ``'300'`` against ``'300.0'``.
Here every value becomes a typed field once, so matching compares numbers as numbers.

Precedence: a header keyword always wins; N.I.N.A.-style file-name tokens
(``..._EXPOSURE_300.00s_GAIN_100_SET-TEMP_-10.00_FILTER_Ha_...``, in the file name or its
directories) fill only the fields the header lacks. :attr:`FrameMetadata.sources` says where
each field came from, so a match can be explained.

**Night date.** Flats are matched by the *night* a frame belongs to: the local date of the
evening the night began, so 23:30 and 02:10 of one night share a date. The rule, first that
applies (see :func:`night_of`):

1. ``DATE-LOC`` (local civil time at the site, written by N.I.N.A.): the date of DATE-LOC - 12 h;
2. ``DATE-OBS`` (UTC) and a site longitude (``SITELONG``, ``OBSGEO-L``, ``LONG-OBS``, degrees,
   east positive; numbers or sexagesimal strings): local mean solar time is UTC + longitude/15 h,
   and the night is the date of that time - 12 h;
3. the same with the caller's ``default_longitude_deg`` (the observer's configured site);
4. ``DATE-OBS`` alone: the date of UTC - 12 h. This is right for frames taken between 16:00 and
   10:00 local time at sites between about UTC-2 h and UTC+4 h (Europe, Africa); elsewhere give
   the longitude.

Header reading goes through :func:`phdserver.library.fits_frames.open_fits`, so a missing or
corrupt file is a :class:`~phdserver.errors.LibraryError`. Synchronous; no trio.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from phdserver.errors import LibraryError
from phdserver.library import header_values as hv
from phdserver.library.fits_frames import open_fits

__all__ = [
    "FrameMetadata",
    "FrameType",
    "metadata_from_header",
    "metadata_from_path",
    "night_of",
    "normalise_frame_type",
    "read_frame_metadata",
    "read_hdu_metadata",
]

FITS_SUFFIXES = (".fits", ".fit", ".fts")


class FrameType(enum.StrEnum):
    """What a frame is. Only bias, dark and flat masters calibrate lights."""

    BIAS = "bias"
    DARK = "dark"
    FLAT = "flat"
    LIGHT = "light"
    DARK_FLAT = "dark_flat"
    """A dark for flats: part of making a master flat, never applied to a light."""
    DEFECT_MAP = "defect_map"
    """phdserver's (PHD2's) bad-pixel map, registered in the library but not used here."""


# Keyword synonyms, in order of preference.
_TYPE_KEYS = ("IMAGETYP", "FRAME", "FRAMETYP")
_EXPOSURE_KEYS = ("EXPTIME", "EXPOSURE", "EXP")
_SET_TEMP_KEYS = ("SET-TEMP", "SETTEMP", "SET_TEMP")
_CCD_TEMP_KEYS = ("CCD-TEMP", "CCD_TEMP", "CCDTEMP", "TEMPERAT")
_XBIN_KEYS = ("XBINNING", "BINX", "CCDXBIN")
_YBIN_KEYS = ("YBINNING", "BINY", "CCDYBIN")
_GAIN_KEYS = ("GAIN", "ISOSPEED")
_OFFSET_KEYS = ("OFFSET", "BLKLEVEL")
_READOUT_KEYS = ("READOUTM", "READMODE")
_FILTER_KEYS = ("FILTER", "FILTNAME", "FILTNAM")
_CAMERA_KEYS = ("INSTRUME", "CAMERA")
_OPTIC_KEYS = ("TELESCOP",)
_LONGITUDE_KEYS = ("SITELONG", "OBSGEO-L", "LONG-OBS")
_COMBINED_KEYS = ("NCOMBINE", "STACKCNT", "NFRAMES")

_PLURALS = {"darks": "dark", "flats": "flat", "lights": "light", "biases": "bias"}


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameMetadata:
    """A frame's properties as matching needs them; ``None`` means "not recorded"."""

    frame_type: FrameType | None = None
    is_master: bool = False
    """``IMAGETYP`` says master, or ``NCOMBINE``/``STACKCNT`` > 1."""
    camera: str | None = None
    optic: str | None = None
    exposure_s: float | None = None
    set_temp_c: float | None = None
    ccd_temp_c: float | None = None
    binning_x: int | None = None
    binning_y: int | None = None
    gain: float | None = None
    offset: float | None = None
    readout_mode: str | None = None
    filter: str | None = None
    width: int | None = None
    height: int | None = None
    date_obs: datetime | None = None
    """Start of the exposure, timezone-aware UTC."""
    night: date | None = None
    """The night the frame belongs to (module docstring, "Night date")."""
    bias_subtracted: bool = False
    """For a master dark: the bias has already been removed (``BIASSUB = T``, ccdproc's
    ``SUBBIAS``, or ``CALSTAT`` containing ``B``). Master darks include the bias otherwise."""
    sources: tuple[tuple[str, str], ...] = field(default=())
    """``(field, where)``: the keyword or ``"file name"`` each field was read from."""

    def source_of(self, name: str) -> str | None:
        """The keyword (or ``"file name"``) field ``name`` came from, if recorded."""
        return dict(self.sources).get(name)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types: dates as ISO 8601 strings, absent values as ``None``."""
        return {
            "frame_type": self.frame_type.value if self.frame_type else None,
            "is_master": self.is_master,
            "camera": self.camera,
            "optic": self.optic,
            "exposure_s": self.exposure_s,
            "set_temp_c": self.set_temp_c,
            "ccd_temp_c": self.ccd_temp_c,
            "binning_x": self.binning_x,
            "binning_y": self.binning_y,
            "gain": self.gain,
            "offset": self.offset,
            "readout_mode": self.readout_mode,
            "filter": self.filter,
            "width": self.width,
            "height": self.height,
            "date_obs": self.date_obs.isoformat() if self.date_obs else None,
            "night": self.night.isoformat() if self.night else None,
            "bias_subtracted": self.bias_subtracted,
            "sources": {name: where for name, where in self.sources},
        }


def normalise_frame_type(text: str | None) -> tuple[FrameType | None, bool]:
    """``(type, is_master)`` for an ``IMAGETYP`` value such as ``'Master Dark'``.

    Case, spaces, underscores and camelCase are ignored: ``'masterDark'``, ``'MASTER_DARK'``
    and ``'Master Dark'`` are the same. ``'Offset'`` and ``'Zero'`` (DSS, IRAF) are bias;
    ``'Object'`` and ``'Science'`` are light; a type naming both dark and flat is a dark flat.
    """
    if not text:
        return None, False
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", str(text)).lower()
    is_master = False
    words: set[str] = set()
    for word in re.split(r"[^a-z]+", spaced):
        if word.startswith("master"):
            is_master, word = True, word.removeprefix("master")
        if word:
            words.add(_PLURALS.get(word, word))
    if words & {"darkflat", "flatdark"}:
        words |= {"dark", "flat"}
    if {"dark", "flat"} <= words:
        return FrameType.DARK_FLAT, is_master
    for frame_type, names in (
        (FrameType.DARK, {"dark"}),
        (FrameType.FLAT, {"flat", "flatfield", "skyflat", "domeflat", "twilightflat"}),
        (FrameType.BIAS, {"bias", "offset", "zero"}),
        (FrameType.LIGHT, {"light", "object", "science"}),
        (FrameType.DEFECT_MAP, {"defect", "defectmap", "badpixel"}),
    ):
        if words & names:
            return frame_type, is_master
    return None, is_master


def metadata_from_header(
    header: Mapping[str, Any],
    *,
    path: Path | None = None,
    default_longitude_deg: float | None = None,
) -> FrameMetadata:
    """Build a :class:`FrameMetadata` from a FITS header, then fill gaps from ``path``'s tokens.

    ``header`` is an astropy ``Header`` or any mapping of keyword to value (keywords upper case).
    """
    header = hv.plain_header(header)
    found: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def take(name: str, keys: tuple[str, ...], convert: Any) -> None:
        for key in keys:
            if key in header:
                value = convert(header[key])
                if value is not None:
                    found[name] = value
                    sources[name] = key
                    return

    take("frame_type_text", _TYPE_KEYS, hv.to_text)
    take("camera", _CAMERA_KEYS, hv.to_text)
    take("optic", _OPTIC_KEYS, hv.to_text)
    take("exposure_s", _EXPOSURE_KEYS, hv.to_non_negative)
    take("set_temp_c", _SET_TEMP_KEYS, hv.to_temperature)
    take("ccd_temp_c", _CCD_TEMP_KEYS, hv.to_temperature)
    take("binning_x", _XBIN_KEYS, hv.to_positive_int)
    take("binning_y", _YBIN_KEYS, hv.to_positive_int)
    take("gain", _GAIN_KEYS, hv.to_number)
    take("offset", _OFFSET_KEYS, hv.to_number)
    take("readout_mode", _READOUT_KEYS, hv.to_text)
    take("filter", _FILTER_KEYS, hv.to_text)
    take("width", ("NAXIS1",), hv.to_positive_int)
    take("height", ("NAXIS2",), hv.to_positive_int)
    take("combined", _COMBINED_KEYS, hv.to_positive_int)
    take("longitude", _LONGITUDE_KEYS, hv.to_longitude)
    if "binning_x" not in found and "BINNING" in header:
        pair = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", str(header["BINNING"]))
        if pair:
            found["binning_x"], found["binning_y"] = int(pair[1]), int(pair[2])
            sources["binning_x"] = sources["binning_y"] = "BINNING"
    frame_type, is_master = normalise_frame_type(found.pop("frame_type_text", None))
    if frame_type is not None:
        sources["frame_type"] = sources.pop("frame_type_text")
    else:
        sources.pop("frame_type_text", None)
    combined = found.pop("combined", 1)
    is_master = is_master or combined > 1
    sources.pop("combined", None)

    date_obs = hv.date_obs(header)
    if date_obs is not None:
        sources["date_obs"] = "DATE-OBS"
    local = hv.parse_datetime(header.get("DATE-LOC"), assume_utc=False)
    longitude = found.pop("longitude", None)
    sources.pop("longitude", None)
    night, night_source = night_of(
        date_obs,
        local_time=local,
        longitude_deg=longitude if longitude is not None else default_longitude_deg,
    )
    if night is not None:
        sources["night"] = night_source
    meta = FrameMetadata(
        frame_type=frame_type,
        is_master=is_master,
        date_obs=date_obs,
        night=night,
        bias_subtracted=_bias_subtracted(header),
        **found,
    )
    meta = replace(meta, sources=tuple(sorted(sources.items())))
    return _fill_from_path(meta, path) if path is not None else meta


def metadata_from_path(path: Path) -> FrameMetadata:
    """Only what the file name and its directories say (N.I.N.A.-style ``KEY_value`` tokens)."""
    return _fill_from_path(FrameMetadata(), Path(path))


def night_of(
    date_obs: datetime | None,
    *,
    local_time: datetime | None = None,
    longitude_deg: float | None = None,
) -> tuple[date | None, str]:
    """The night date of a frame and the rule that gave it (module docstring, "Night date").

    ``local_time`` is a naive local civil time (``DATE-LOC``); ``date_obs`` is aware UTC.
    """
    half_day = timedelta(hours=12)
    if local_time is not None:
        return (local_time.replace(tzinfo=None) - half_day).date(), "DATE-LOC - 12 h"
    if date_obs is None:
        return None, ""
    utc = date_obs.astimezone(UTC).replace(tzinfo=None)
    if longitude_deg is not None and math.isfinite(longitude_deg):
        solar = utc + timedelta(hours=longitude_deg / 15.0)
        return (solar - half_day).date(), f"DATE-OBS at longitude {longitude_deg:+.2f} - 12 h"
    return (utc - half_day).date(), "DATE-OBS (UTC) - 12 h"


def read_hdu_metadata(
    path: Path, *, default_longitude_deg: float | None = None
) -> list[tuple[int, FrameMetadata]]:
    """``(hdu index, metadata)`` of every 2-D image HDU of a FITS file, in file order.

    A PHD2 dark library has one image per exposure; most other files have exactly one.

    Raises
    ------
    LibraryError
        Missing, truncated or corrupt file.
    """
    path = Path(path)
    headers = []
    with open_fits(path, "FITS file") as hdul:
        for index, hdu in enumerate(hdul):
            header = hdu.header
            if header.get("NAXIS") == 2 and header.get("NAXIS1") and header.get("NAXIS2"):
                headers.append((index, header.copy()))
    return [
        (index, metadata_from_header(header, path=path,
                                     default_longitude_deg=default_longitude_deg))
        for index, header in headers
    ]


def read_frame_metadata(
    path: Path, *, hdu: int = 0, default_longitude_deg: float | None = None
) -> FrameMetadata:
    """The metadata of one HDU of ``path`` (the primary by default).

    Raises
    ------
    LibraryError
        Missing, truncated or corrupt file, or no such HDU.
    """
    path = Path(path)
    with open_fits(path, "FITS file") as hdul:
        if not 0 <= hdu < len(hdul):
            raise LibraryError(f"FITS file {path} has no HDU {hdu} (it has {len(hdul)}).")
        header = hdul[hdu].header.copy()
    return metadata_from_header(header, path=path, default_longitude_deg=default_longitude_deg)


def _bias_subtracted(header: Mapping[str, Any]) -> bool:
    if header.get("BIASSUB") is True or "SUBBIAS" in header:
        return True
    calstat = header.get("CALSTAT")
    return isinstance(calstat, str) and "B" in calstat.upper()


# --- file-name tokens -------------------------------------------------------------------------

# Token key -> (field, converter). Longest keys first so SET-TEMP wins over TEMP-like prefixes.
_NAME_KEYS: dict[str, tuple[str, Any]] = {
    "EXPOSURE": ("exposure_s", hv.to_non_negative),
    "EXPTIME": ("exposure_s", hv.to_non_negative),
    "EXP": ("exposure_s", hv.to_non_negative),
    "SET-TEMP": ("set_temp_c", hv.to_temperature),
    "SETTEMP": ("set_temp_c", hv.to_temperature),
    "CCD-TEMP": ("ccd_temp_c", hv.to_temperature),
    "GAIN": ("gain", hv.to_number),
    "OFFSET": ("offset", hv.to_number),
    "READOUTM": ("readout_mode", hv.to_text),
    "FILTER": ("filter", hv.to_text),
    "BIN": ("binning", None),
    "BINNING": ("binning", None),
}
_KEY_VALUE_RE = re.compile(
    "^(" + "|".join(re.escape(k) for k in sorted(_NAME_KEYS, key=len, reverse=True)) + r")-(.+)$"
)
_TYPE_WORDS = {
    "LIGHT", "LIGHTS", "DARK", "DARKS", "FLAT", "FLATS", "BIAS", "BIASES", "DARKFLAT",
    "DARKFLATS", "FLATDARK", "FLATDARKS", "MASTERDARK", "MASTERFLAT", "MASTERBIAS",
}


def _name_tokens(path: Path) -> list[tuple[str, str]]:
    """``(KEY, value)`` pairs from the stem, then the directories from the closest up."""
    name = path.name
    for suffix in (".fz", ".gz"):
        name = name.removesuffix(suffix)
    stem = Path(name).stem
    pairs: list[tuple[str, str]] = []
    for depth, part in enumerate([stem, *(p.name for p in path.parents)]):
        if depth > 0 and part.upper() in _TYPE_WORDS:
            pairs.append(("IMAGETYP", part))
            continue
        tokens = [t for t in part.split("_") if t]
        for i, token in enumerate(tokens):
            upper = token.upper()
            if upper in _NAME_KEYS and i + 1 < len(tokens):
                pairs.append((upper, tokens[i + 1]))
            elif m := _KEY_VALUE_RE.match(upper):
                pairs.append((m[1], token[len(m[1]) + 1:]))
            elif depth == 0 and upper in _TYPE_WORDS:
                pairs.append(("IMAGETYP", token))
    return pairs


def _fill_from_path(meta: FrameMetadata, path: Path) -> FrameMetadata:
    updates: dict[str, Any] = {}
    for key, raw in _name_tokens(path):
        if key == "IMAGETYP":
            if meta.frame_type is None and "frame_type" not in updates:
                frame_type, is_master = normalise_frame_type(raw)
                updates["frame_type"] = frame_type
                updates["is_master"] = meta.is_master or is_master
            continue
        name, convert = _NAME_KEYS[key]
        if name == "binning":
            m = re.fullmatch(r"(\d+)(?:[xX](\d+))?", raw)
            if m and meta.binning_x is None and "binning_x" not in updates:
                updates["binning_x"] = int(m[1])
                updates["binning_y"] = int(m[2] or m[1])
            continue
        if getattr(meta, name) is None and name not in updates:
            value = convert(raw)
            if value is not None:
                updates[name] = value
    if not updates:
        return meta
    sources = dict(meta.sources)
    sources.update((name, "file name") for name in updates if name != "is_master")
    return replace(meta, **updates, sources=tuple(sorted(sources.items())))
