"""PHD2's defect (bad-pixel) map text file: writer, reader and compatibility check.

The format is PHD2's ``DefectMap::Save`` (reference/phd2.md §3 "Text format"): a ``#`` header
describing how the map was made, then one ``x y`` line per defective pixel (0-based, full frame,
hardware-binned pixels, ``data[y, x]``), LF line endings. PHD2 never validates the header when
loading, so the header is information for people; the pixel lines are the contract.

Reading follows PHD2's ``LoadDefectMap``: blank lines and lines starting with ``#`` after
leading white space are skipped; a line whose first two tokens are integers is a pixel (further
tokens are ignored); any other line is junk and skipped. PHD2 logs junk lines; we count them.

PHD2 trusts a map only if its *master dark* FITS exists and has the camera's frame size
(``DefectMapExists``); :func:`defect_map_compatibility_problem` does the same.

Everything here is synchronous; async callers use ``trio.to_thread``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from phdserver.errors import LibraryError
from phdserver.library.atomic import atomic_write_text
from phdserver.library.fits_frames import open_fits

__all__ = [
    "DEFECT_MAP_MISMATCH_MESSAGE",
    "DEFECT_MAP_SIGNATURE",
    "DefectMapContents",
    "DefectMapInfo",
    "defect_map_compatibility_problem",
    "format_defect_map",
    "parse_defect_map",
    "read_defect_map",
    "write_defect_map",
]

DEFECT_MAP_SIGNATURE = "PHD2 Defect Map v1"
DEFECT_MAP_MISMATCH_MESSAGE = (
    "Bad-pixel map does not match the camera in this profile - it needs to be replaced."
)
_INT_RE = re.compile(r"[+-]?[0-9]+")
_TOKEN_SPLIT = re.compile(r"[ \t\r\n]+")
_LINE_SPLIT = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True, kw_only=True)
class DefectMapInfo:
    """What the header of a defect map says about how it was made."""

    generated: datetime
    """When the map was made; written in local time (an aware value is converted, a naive one
    is taken as local already)."""
    camera: str
    exposure_ms: int
    frame_count: int
    cold_aggressiveness: int
    hot_aggressiveness: int
    cold_sigma: float
    hot_sigma: float
    mean: float
    stdev: float
    median: int
    mad: int
    delta_cold: int
    """The cold threshold as written, ``-(int)(cold_sigma * stdev)``: zero or negative."""
    delta_hot: int
    """The hot threshold, ``(int)(hot_sigma * stdev)``."""

    def header_lines(self) -> tuple[str, ...]:
        """The header lines after the signature and before the count, without ``# ``."""
        generated = self.generated
        if generated.tzinfo is not None:
            generated = generated.astimezone()
        camera = " ".join(_LINE_SPLIT.split(self.camera))
        return (
            f"Generated: {generated.strftime('%Y-%m-%d %H:%M:%S')}",
            f"Camera: {camera}",
            f"Dark Exposure Time: {self.exposure_ms:d} ms",
            f"Dark Frame Count: {self.frame_count:d}",
            f"Aggressiveness, cold: {self.cold_aggressiveness:d}",
            f"Aggressiveness, hot: {self.hot_aggressiveness:d}",
            f"Sigma Thresh, cold: {self.cold_sigma:.2f}",
            f"Sigma Thresh, hot: {self.hot_sigma:.2f}",
            f"Mean: {self.mean:.0f}",
            f"Stdev: {self.stdev:.0f}",
            f"Median: {self.median:d}",
            f"MAD: {self.mad:d}",
            f"DeltaCold: {self.delta_cold:+d}",
            f"DeltaHot: {self.delta_hot:+d}",
        )

    @classmethod
    def from_header(cls, header: dict[str, str]) -> DefectMapInfo:
        """Rebuild the info from a header read by :func:`read_defect_map`.

        Mean, stdev and the sigmas come back rounded as written. Raises :class:`LibraryError`
        when a field is missing or malformed (PHD2 itself never reads the header).
        """
        try:
            return cls(
                generated=datetime.strptime(header["Generated"], "%Y-%m-%d %H:%M:%S"),
                camera=header["Camera"],
                exposure_ms=int(header["Dark Exposure Time"].removesuffix("ms").strip()),
                frame_count=int(header["Dark Frame Count"]),
                cold_aggressiveness=int(header["Aggressiveness, cold"]),
                hot_aggressiveness=int(header["Aggressiveness, hot"]),
                cold_sigma=float(header["Sigma Thresh, cold"]),
                hot_sigma=float(header["Sigma Thresh, hot"]),
                mean=float(header["Mean"]),
                stdev=float(header["Stdev"]),
                median=int(header["Median"]),
                mad=int(header["MAD"]),
                delta_cold=int(header["DeltaCold"]),
                delta_hot=int(header["DeltaHot"]),
            )
        except (KeyError, ValueError) as exc:
            raise LibraryError(f"Defect map header is incomplete or malformed ({exc}).") from exc


class DefectMapContents(NamedTuple):
    """What :func:`read_defect_map` found in a file."""

    pixels: np.ndarray
    """``(n, 2)`` int64 array of ``(x, y)``, in file order."""
    header: dict[str, str]
    """``# Key: value`` comment lines, keyed by the text before the first colon."""
    ignored_lines: int
    """Junk lines skipped (neither blank, comment nor a pixel)."""


def _pixel_array(pixels: ArrayLike) -> np.ndarray:
    arr = np.asarray(pixels)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"pixels must be an (n, 2) integer array, got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64, copy=False)


def format_defect_map(info: DefectMapInfo, pixels: ArrayLike) -> str:
    """The text of a defect map file, byte for byte what PHD2 writes.

    Parameters
    ----------
    info
        The header fields.
    pixels
        ``(n, 2)`` integers ``(x, y)`` (or a list of pairs), written in the given order.
    """
    arr = _pixel_array(pixels)
    lines = [f"# {DEFECT_MAP_SIGNATURE}"]
    lines.extend(f"# {line}" for line in info.header_lines())
    lines.append(f"# Defect count: {len(arr)}")
    lines.extend(f"{x} {y}" for x, y in arr.tolist())
    return "\n".join(lines) + "\n"


def write_defect_map(path: Path, info: DefectMapInfo, pixels: ArrayLike) -> None:
    """Write a defect map file atomically (see :func:`format_defect_map`)."""
    atomic_write_text(Path(path), format_defect_map(info, pixels))


def parse_defect_map(text: str) -> DefectMapContents:
    """Parse the text of a defect map the way PHD2's ``LoadDefectMap`` does."""
    xs: list[int] = []
    ys: list[int] = []
    header: dict[str, str] = {}
    ignored = 0
    for raw in _LINE_SPLIT.split(text):
        line = raw.lstrip(" \t\v\f")
        if not line:
            continue
        if line.startswith("#"):
            key, colon, value = line[1:].partition(":")
            if colon:
                header[key.strip()] = value.strip()
            continue
        tokens = _TOKEN_SPLIT.split(line, maxsplit=2)
        if len(tokens) >= 2 and _INT_RE.fullmatch(tokens[0]) and _INT_RE.fullmatch(tokens[1]):
            xs.append(int(tokens[0]))
            ys.append(int(tokens[1]))
        else:
            ignored += 1
    pixels = np.column_stack((np.array(xs, dtype=np.int64), np.array(ys, dtype=np.int64)))
    return DefectMapContents(pixels=pixels.reshape(-1, 2), header=header, ignored_lines=ignored)


def read_defect_map(path: Path) -> DefectMapContents:
    """Read a defect map file written by us or by PHD2.

    Raises
    ------
    LibraryError
        The file is missing or unreadable.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LibraryError(f"Defect map {path} does not exist.") from None
    except OSError as exc:
        raise LibraryError(f"Cannot read defect map {path}: {exc.strerror}.") from exc
    return parse_defect_map(raw.decode("utf-8", errors="replace"))


def defect_map_compatibility_problem(
    master_path: Path, *, width: int, height: int, map_path: Path | None = None
) -> str | None:
    """Why the defect map cannot be used with the camera, or None if it can.

    Like PHD2, the map is judged by its master dark: ``master_path`` must be a readable FITS
    image of ``width`` x ``height`` (the full frame at the current binning); 0 x 0 means the
    camera size is unknown and, as in PHD2, accepts the map without looking. When ``map_path``
    is given, the ``.txt`` map must exist too.
    """
    if map_path is not None and not Path(map_path).is_file():
        return f"Defect map {map_path} does not exist."
    if (width, height) == (0, 0):
        return None
    try:
        with open_fits(master_path, "Defect map master dark") as hdul:
            header = hdul[0].header
            size = (header.get("NAXIS1"), header.get("NAXIS2"))
    except LibraryError as exc:
        return f"{DEFECT_MAP_MISMATCH_MESSAGE} ({exc.message})"
    if size != (width, height):
        return DEFECT_MAP_MISMATCH_MESSAGE
    return None
