"""PHD2's multi-exposure dark library file: records, writer, reader and compatibility check.

The file (reference/phd2.md §2 "Save", "Load") holds one ``uint16`` master dark per exposure in
ascending order, the first as the primary HDU and the others as IMAGE extensions without
``EXTNAME``. Real PHD2 must load what we write and we must load what it writes, including
libraries older than PHD2's PR #1379 that carry only ``EXPOSURE`` (and ``USERNOTE``).

Differences from PHD2, on purpose:

* A HDU without ``EXPOSURE`` is refused (:class:`LibraryError` naming the HDU): PHD2 files it
  under the exposure being requested at load time, which a daemon loading at start-up does not
  have, and guessing would apply the wrong dark.
* Two HDUs with the same exposure (only a hand-made file has them): the later one wins, as it
  does in PHD2's exposure map.
* Binning, bit depth and gain absent from a file are *remembered as absent* (the ``*_recorded``
  flags) so that an old library is judged on frame size alone, as PHD2 judges it, and a merged
  library does not claim values the old frames never recorded.
* :func:`compatibility_problem` also compares binning and bit depth when the library records
  them; PHD2 compares only the frame size, which lets a library taken at another bit depth
  through (PHD2 issues #721, #878).

Everything here is synchronous; async callers use ``trio.to_thread``.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from phdserver.errors import LibraryError
from phdserver.library.fits_frames import as_uint16, fits_text, open_fits, write_hdus

__all__ = [
    "INCOMPATIBLE_FORMATS_MESSAGE",
    "LIBRARY_MISMATCH_MESSAGE",
    "MAX_NOTE_LENGTH",
    "DarkFrame",
    "DarkLibrary",
    "compatibility_problem",
    "read_dark_library",
    "write_dark_library",
]

MAX_NOTE_LENGTH = 65
"""PHD2's limit for the library note (``DarksDialog::MaxNoteLength``)."""

INCOMPATIBLE_FORMATS_MESSAGE = (
    "Existing dark library has frames with incompatible formats - please rebuild the dark "
    "library from scratch."
)
LIBRARY_MISMATCH_MESSAGE = (
    "Dark library does not match the camera in this profile. Check that you are connected to "
    "the camera you want to use for guiding."
)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class DarkFrame:
    """One master dark of a library and what is known of how it was taken.

    ``data`` is stored as a read-only view. Equality compares the pixels too.
    """

    data: np.ndarray
    """2-D ``uint16``, ``data[y, x]``."""
    exposure_ms: int
    binning: int = 1
    bits_per_pixel: int = 16
    gain: int = 0
    note: str = ""
    frame_count: int | None = None
    temperature_c: float | None = None
    set_temperature_c: float | None = None
    date_obs: str | None = None
    """ISO 8601 UTC start of the first exposure."""
    combine: str | None = None
    """How the frames were combined, e.g. ``"mean"`` (PHD2's integer mean)."""
    camera: str | None = None
    binning_recorded: bool = True
    """False when read from a file without ``XBINNING`` (``binning`` is then PHD2's default)."""
    bits_per_pixel_recorded: bool = True
    """False when read from a file without ``SATURATE``."""
    gain_recorded: bool = True
    """False when read from a file without ``GAIN``."""

    def __post_init__(self) -> None:
        data = self.data
        if not isinstance(data, np.ndarray) or data.ndim != 2 or data.dtype != np.uint16:
            raise ValueError(
                "a dark frame must be a 2-D uint16 array, got "
                f"{getattr(data, 'dtype', type(data))} {getattr(data, 'shape', '')}"
            )
        if data.size == 0:
            raise ValueError("a dark frame must not be empty")
        if self.exposure_ms < 0:
            raise ValueError(f"exposure_ms must be >= 0, got {self.exposure_ms}")
        if self.binning < 1:
            raise ValueError(f"binning must be >= 1, got {self.binning}")
        if not 1 <= self.bits_per_pixel <= 16:
            raise ValueError(f"bits_per_pixel must be 1..16, got {self.bits_per_pixel}")
        view = data.view()
        view.flags.writeable = False
        object.__setattr__(self, "data", view)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DarkFrame):
            return NotImplemented
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "data":
                if a.shape != b.shape or not np.array_equal(a, b):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    @property
    def width(self) -> int:
        return int(self.data.shape[1])

    @property
    def height(self) -> int:
        return int(self.data.shape[0])


@dataclass(frozen=True, slots=True, kw_only=True)
class DarkLibrary:
    """A dark library: at least one frame, ascending unique exposures, all the same size."""

    frames: tuple[DarkFrame, ...]

    def __post_init__(self) -> None:
        frames = tuple(self.frames)
        object.__setattr__(self, "frames", frames)
        if not frames:
            raise ValueError("a dark library needs at least one frame")
        exposures = [f.exposure_ms for f in frames]
        if any(a >= b for a, b in itertools.pairwise(exposures)):
            raise ValueError(f"exposures must be ascending and unique, got {exposures}")
        shape = frames[0].data.shape
        for f in frames[1:]:
            if f.data.shape != shape:
                raise ValueError(
                    f"all frames must have the same size: {f.exposure_ms} ms is "
                    f"{f.width}x{f.height}, {frames[0].exposure_ms} ms is "
                    f"{frames[0].width}x{frames[0].height}"
                )

    @classmethod
    def from_frames(cls, frames: Iterable[DarkFrame]) -> DarkLibrary:
        """A library of ``frames`` in any order (sorted here); duplicates raise ValueError."""
        return cls(frames=tuple(sorted(frames, key=lambda f: f.exposure_ms)))

    @property
    def exposures(self) -> tuple[int, ...]:
        return tuple(f.exposure_ms for f in self.frames)

    @property
    def width(self) -> int:
        return self.frames[0].width

    @property
    def height(self) -> int:
        return self.frames[0].height

    @property
    def binning(self) -> int:
        return self.frames[0].binning

    @property
    def bits_per_pixel(self) -> int:
        return self.frames[0].bits_per_pixel

    @property
    def gain(self) -> int:
        return self.frames[0].gain

    @property
    def note(self) -> str:
        return self.frames[0].note

    def frame_for(self, exposure_ms: int) -> DarkFrame:
        """PHD2's ``SelectDark``: the smallest exposure >= ``exposure_ms``, else the longest."""
        i = bisect.bisect_left(self.exposures, exposure_ms)
        return self.frames[min(i, len(self.frames) - 1)]

    def merged_with(self, new: DarkLibrary) -> DarkLibrary:
        """PHD2's "Modify/extend existing dark library": ``new`` replaces equal exposures.

        Raises ValueError when the frame sizes differ (the caller checks compatibility first).
        """
        by_exposure = {f.exposure_ms: f for f in self.frames}
        by_exposure.update((f.exposure_ms, f) for f in new.frames)
        return DarkLibrary.from_frames(by_exposure.values())

    def with_note(self, note: str) -> DarkLibrary:
        """Every frame carrying ``note``, as PHD2 saves one note for the whole library."""
        return DarkLibrary(frames=tuple(dataclasses.replace(f, note=note) for f in self.frames))


def compatibility_problem(
    library: DarkLibrary,
    *,
    width: int,
    height: int,
    binning: int | None = None,
    bits_per_pixel: int | None = None,
) -> str | None:
    """Why ``library`` cannot be used with the camera, or None if it can.

    ``width`` x ``height`` is the full frame at the current binning (PHD2's ``DarkFrameSize``);
    0 x 0 means unknown and, as in PHD2, skips the size check. Binning and bit depth are compared
    only when given and when the library records them; bit depths are compared as PHD2 reads
    them back, 8-bit (<= 8) or 16-bit (anything more).
    """
    if (width, height) != (0, 0) and (library.width, library.height) != (width, height):
        return LIBRARY_MISMATCH_MESSAGE
    differences: list[str] = []
    if binning is not None:
        recorded = {f.binning for f in library.frames if f.binning_recorded}
        for lib_binning in sorted(recorded - {binning}):
            differences.append(f"library binning {lib_binning}, camera binning {binning}")
            break
    if bits_per_pixel is not None:
        camera_depth = _depth_class(bits_per_pixel)
        recorded = {
            _depth_class(f.bits_per_pixel) for f in library.frames if f.bits_per_pixel_recorded
        }
        for lib_depth in sorted(recorded - {camera_depth}):
            differences.append(f"library bit depth {lib_depth}, camera bit depth {camera_depth}")
            break
    if differences:
        return f"{LIBRARY_MISMATCH_MESSAGE} ({'; '.join(differences)})"
    return None


def _depth_class(bits_per_pixel: int) -> int:
    return 16 if bits_per_pixel > 8 else 8


def write_dark_library(path: Path, library: DarkLibrary, creator: str) -> None:
    """Write ``library`` to ``path`` atomically in PHD2's format (plus provenance keywords).

    Raises
    ------
    ValueError
        A note longer than :data:`MAX_NOTE_LENGTH` or not printable ASCII.
    OSError
        The file could not be written; the previous library is left intact.
    """
    for frame in library.frames:
        if len(frame.note) > MAX_NOTE_LENGTH:
            raise ValueError(f"note must be at most {MAX_NOTE_LENGTH} characters")
        if fits_text(frame.note) != frame.note:
            raise ValueError("note must be printable ASCII")
    hdus: list[fits.PrimaryHDU | fits.ImageHDU] = []
    for i, frame in enumerate(library.frames):
        hdu = fits.PrimaryHDU(data=frame.data) if i == 0 else fits.ImageHDU(data=frame.data)
        _fill_header(hdu.header, frame, creator)
        hdus.append(hdu)
    write_hdus(path, hdus)


def _fill_header(h: fits.Header, frame: DarkFrame, creator: str) -> None:
    h["EXPOSURE"] = (frame.exposure_ms / 1000.0, "Exposure time in seconds")
    if frame.binning_recorded:
        h["XBINNING"] = (frame.binning, "Camera X Bin")
        h["YBINNING"] = (frame.binning, "Camera Y Bin")
    if frame.bits_per_pixel_recorded:
        h["SATURATE"] = ((1 << frame.bits_per_pixel) - 1, "Data value at which saturation occurs")
    if frame.gain_recorded:
        h["GAIN"] = (int(frame.gain), "PHD Gain Value (0-100)")
    if frame.note:
        h["USERNOTE"] = frame.note
    h["IMAGETYP"] = ("Master Dark", "Type of image")
    if frame.frame_count is not None:
        h["NCOMBINE"] = (int(frame.frame_count), "Number of frames combined")
    if frame.combine is not None:
        h["COMBMETH"] = (fits_text(frame.combine), "Combination method")
    if frame.temperature_c is not None:
        h["CCD-TEMP"] = (float(frame.temperature_c), "Sensor temperature in C")
    if frame.set_temperature_c is not None:
        h["SET-TEMP"] = (float(frame.set_temperature_c), "Cooler set point in C")
    if frame.date_obs is not None:
        h["DATE-OBS"] = (fits_text(frame.date_obs), "Start of the first exposure, UTC")
    if frame.camera is not None:
        h["INSTRUME"] = (fits_text(frame.camera), "Instrument name")
    h["CREATOR"] = (fits_text(creator), "Capture software")


def read_dark_library(path: Path) -> DarkLibrary:
    """Read a dark library written by :func:`write_dark_library` or by any PHD2 version.

    Raises
    ------
    LibraryError
        Missing, truncated or corrupt file; a HDU that is not a 2-D image or not the size of
        the others (PHD2's "incompatible formats" message); a HDU without a usable
        ``EXPOSURE``.
    """
    with open_fits(path, "Dark library") as hdul:
        shapes = set()
        for hdu in hdul:
            if (
                not isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU)
                or isinstance(hdu, fits.GroupsHDU)
                or hdu.header.get("NAXIS") != 2
            ):
                raise LibraryError(INCOMPATIBLE_FORMATS_MESSAGE)
            shapes.add((hdu.header.get("NAXIS1"), hdu.header.get("NAXIS2")))
        if len(shapes) != 1:
            raise LibraryError(INCOMPATIBLE_FORMATS_MESSAGE)
        by_exposure: dict[int, DarkFrame] = {}
        for index, hdu in enumerate(hdul):
            frame = _frame_from_hdu(path, index, hdu)
            by_exposure[frame.exposure_ms] = frame  # a later duplicate wins
    return DarkLibrary.from_frames(by_exposure.values())


def _frame_from_hdu(path: Path, index: int, hdu: fits.PrimaryHDU | fits.ImageHDU) -> DarkFrame:
    h = hdu.header
    exposure_s = _number(h.get("EXPOSURE"))
    if exposure_s is None or not math.isfinite(exposure_s) or exposure_s < 0:
        raise LibraryError(
            f"Dark library {path}: HDU {index} has no valid EXPOSURE keyword; "
            "please rebuild the dark library."
        )
    xbinning = _optional_int(h.get("XBINNING"))
    saturate = _optional_int(h.get("SATURATE"))
    gain = _optional_int(h.get("GAIN"))
    note = h.get("USERNOTE", "")
    return DarkFrame(
        data=as_uint16(hdu.data),
        exposure_ms=math.floor(exposure_s * 1000.0 + 0.5),  # PHD2's ROUNDF
        binning=max(xbinning, 1) if xbinning is not None else 1,
        bits_per_pixel=(16 if saturate >= 256 else 8) if saturate is not None else 16,
        gain=gain if gain is not None else 0,
        note=str(note)[:MAX_NOTE_LENGTH],
        frame_count=_optional_int(h.get("NCOMBINE")),
        temperature_c=_number(h.get("CCD-TEMP")),
        set_temperature_c=_number(h.get("SET-TEMP")),
        date_obs=_optional_str(h.get("DATE-OBS")),
        combine=_optional_str(h.get("COMBMETH")),
        camera=_optional_str(h.get("INSTRUME")),
        binning_recorded=xbinning is not None,
        bits_per_pixel_recorded=saturate is not None,
        gain_recorded=gain is not None,
    )


def _number(value: object) -> float | None:
    """A header value as a finite-or-not float; None when absent or not a number.

    cfitsio converts numeric strings when a number is asked for, so we accept them too.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _optional_int(value: object) -> int | None:
    number = _number(value)
    return int(number) if number is not None and math.isfinite(number) else None


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None
