"""PHD2's guide log (``PHD2_GuideLog_<date>_<time>.txt``), so PHD2 Log Viewer opens ours.

The format is PHD2's log version 2.5 (reference/guiding.md; read from PHD2's guidinglog.cpp and
PHD2 Log Viewer's parser, never copied): a banner line, then for each calibration a
``Calibration Begins at`` block with a ``Direction,Step,dx,dy,x,y,Dist`` table, and for each
guiding session a ``Guiding Begins at`` block, free-form ``key = value`` header lines, the
18-column ``Frame,Time,mount,...`` header and one CSV row per frame, ``INFO:`` lines for
dithers, settling and lock changes, and ``Guiding Ends at``. Times are the machine's local
time, as PHD2 writes them; the ``Time`` column is seconds since guiding began.

:class:`GuideLogFormat` is pure (lines from values); :class:`GuideLog` appends them to the file
and flushes each write, so a crash loses at most the line being written. Appending is a few
hundred bytes a frame: the caller may do it in the event loop's thread pool or, as the guider
does, in a worker thread it already owns.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

__all__ = [
    "GUIDE_COLUMNS",
    "LOG_VERSION",
    "GuideLog",
    "GuideLogFormat",
    "GuideLogHeader",
    "guide_log_name",
]

LOG_VERSION: Final = "2.5"
GUIDE_COLUMNS: Final = (
    "Frame,Time,mount,dx,dy,RARawDistance,DECRawDistance,RAGuideDistance,DECGuideDistance,"
    "RADuration,RADirection,DECDuration,DECDirection,XStep,YStep,StarMass,SNR,ErrorCode"
)
CALIBRATION_COLUMNS: Final = "Direction,Step,dx,dy,x,y,Dist"
_DIRECTION_LETTER: Final = {"East": "E", "West": "W", "North": "N", "South": "S"}


def guide_log_name(started: dt.datetime) -> str:
    """PHD2's file name for a log begun at ``started`` (local time)."""
    return started.strftime("PHD2_GuideLog_%Y-%m-%d_%H%M%S.txt")


def _stamp(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True, slots=True, kw_only=True)
class GuideLogHeader:
    """What a calibration or guiding block says about the equipment and the star.

    ``settings`` are further ``key = value`` lines, written in order after the mount line;
    PHD2 Log Viewer reads ``X guide algorithm = <name>, Minimum move = <px>``, the same for
    ``Y``, and ``Max RA duration = <ms>, Max DEC duration = <ms>`` from them and shows the rest
    as they are. ``calibration`` (x angle °, x rate px/s, y angle °, y rate px/s) goes on the
    mount line, where the Log Viewer looks for it.
    """

    profile: str
    camera: str
    exposure_ms: int
    mount: str
    pixel_scale: float | None = None
    binning: int = 1
    focal_length_mm: float | None = None
    calibration: tuple[float, float, float, float] | None = None
    lock: tuple[float, float] = (0.0, 0.0)
    star: tuple[float, float] = (0.0, 0.0)
    hfd: float = 0.0
    settings: Sequence[tuple[str, str]] = field(default_factory=tuple)


class GuideLogFormat:
    """The lines of a guide log, from values; no I/O."""

    def banner(self, version: str, enabled_at: dt.datetime) -> list[str]:
        """PHD2's first line; the version names phdserver (the Log Viewer shows it as is)."""
        return [f"PHD2 version phdserver-{version}, Log version {LOG_VERSION}. "
                f"Log enabled at {_stamp(enabled_at)}"]

    def _equipment(self, header: GuideLogHeader) -> list[str]:
        if header.pixel_scale is not None:
            focal = (f", Focal length = {header.focal_length_mm:.0f} mm"
                     if header.focal_length_mm else "")
            scale = (f"Pixel scale = {header.pixel_scale:.2f} arc-sec/px, "
                     f"Binning = {header.binning}{focal}")
        else:
            scale = f"Pixel scale = unspecified, Binning = {header.binning}"
        return [
            f"Equipment Profile = {header.profile}",
            f"Camera = {header.camera}",
            f"Exposure = {header.exposure_ms} ms",
            scale,
            f"Mount = {header.mount}{self._calibration(header)}",
            *(f"{key} = {value}" for key, value in header.settings),
            "Dec = Unknown, Hour angle = Unknown, Pier side = Unknown, Rotator pos = N/A",
            f"Lock position = {header.lock[0]:.3f}, {header.lock[1]:.3f}, "
            f"Star position = {header.star[0]:.3f}, {header.star[1]:.3f}, "
            f"HFD = {header.hfd:.2f} px",
        ]

    @staticmethod
    def _calibration(header: GuideLogHeader) -> str:
        if header.calibration is None:
            return ""
        x_angle, x_rate, y_angle, y_rate = header.calibration
        return (f", xAngle = {x_angle:.1f}, xRate = {x_rate:.3f}, yAngle = {y_angle:.1f}, "
                f"yRate = {y_rate:.3f}")

    def calibration_begins(self, header: GuideLogHeader, when: dt.datetime) -> list[str]:
        return ["", f"Calibration Begins at {_stamp(when)}", *self._equipment(header),
                CALIBRATION_COLUMNS]

    def calibration_step(self, direction: str, step: int, dx: float, dy: float, x: float,
                         y: float, distance: float) -> list[str]:
        return [f"{direction},{step},{dx:.3f},{dy:.3f},{x:.3f},{y:.3f},{distance:.3f}"]

    def axis_complete(self, direction: str, angle_deg: float, rate_px_per_s: float,
                      parity: str = "N/A") -> list[str]:
        """After the West or North leg: the axis' angle and rate (PHD2 logs px/s)."""
        return [f"{direction} calibration complete. Angle = {angle_deg:.1f} deg, "
                f"Rate = {rate_px_per_s:.3f} px/sec, Parity = {parity}"]

    def calibration_complete(self, mount: str) -> list[str]:
        return [f"Calibration complete, mount = {mount}."]

    def calibration_failed(self, reason: str) -> list[str]:
        return [reason]

    def guiding_begins(self, header: GuideLogHeader, when: dt.datetime) -> list[str]:
        return ["", f"Guiding Begins at {_stamp(when)}", *self._equipment(header), GUIDE_COLUMNS]

    def guide_step(self, step: Mapping[str, Any]) -> list[str]:
        """One row from a ``GuideStep`` event's fields (PHD2's names and units)."""
        ra_ms = int(step.get("RADuration", 0))
        dec_ms = int(step.get("DECDuration", 0))
        ra_dir = _DIRECTION_LETTER.get(str(step.get("RADirection", "")), "") if ra_ms else ""
        dec_dir = _DIRECTION_LETTER.get(str(step.get("DECDirection", "")), "") if dec_ms else ""
        return [
            f'{int(step["Frame"])},{float(step["Time"]):.3f},"Mount",'
            f'{float(step["dx"]):.3f},{float(step["dy"]):.3f},'
            f'{float(step["RADistanceRaw"]):.3f},{float(step["DECDistanceRaw"]):.3f},'
            f'{float(step["RADistanceGuide"]):.3f},{float(step["DECDistanceGuide"]):.3f},'
            f"{ra_ms},{ra_dir},{dec_ms},{dec_dir},,,"
            f'{float(step.get("StarMass", 0)):.0f},{float(step.get("SNR", 0)):.2f},'
            f'{int(step.get("ErrorCode", 0))}'
        ]

    def frame_dropped(self, frame: int, seconds: float, mass: float, snr: float,
                      error_code: int, status: str) -> list[str]:
        """A frame with no usable star (PHD2's ``"DROP"`` row, its status quoted)."""
        quoted = status.replace('"', "'")
        return [f'{frame},{seconds:.3f},"DROP",,,,,,,,,,,,,{mass:.0f},{snr:.2f},{error_code},'
                f'"{quoted}"']

    def calibration_star_lost(self, mass: float, snr: float, error_code: int,
                              status: str) -> list[str]:
        return [f"INFO: STAR LOST during calibration, Mass= {mass:.0f}, SNR= {snr:.2f}, "
                f"Error= {error_code}, Status={status}"]

    def dithered(self, dx: float, dy: float, lock: tuple[float, float]) -> list[str]:
        return [f"INFO: DITHER by {dx:.3f}, {dy:.3f}, new lock pos = {lock[0]:.3f}, "
                f"{lock[1]:.3f}"]

    def settling(self, change: str) -> list[str]:
        """``change`` is PHD2's: "Settling started", "Settling complete", "Settling failed"."""
        return [f"INFO: SETTLING STATE CHANGE, {change}"]

    def lock_position_set(self, lock: tuple[float, float]) -> list[str]:
        return [f"INFO: SET LOCK POSITION, new lock pos = {lock[0]:.3f}, {lock[1]:.3f}"]

    def server_command(self, command: str) -> list[str]:
        return [f"INFO: Server received {command}"]

    def guiding_ends(self, when: dt.datetime) -> list[str]:
        return [f"Guiding Ends at {_stamp(when)}"]

    def closed(self, when: dt.datetime) -> list[str]:
        return ["", f"Log closed at {_stamp(when)}"]


class GuideLog:
    """One guide log file in ``directory``, appended line by line.

    Opening never overwrites: a file of the same name (two starts in one second) gets a
    ``-2``, ``-3``... before its extension. Blocking I/O: call from a worker thread.
    """

    def __init__(self, directory: Path, *, version: str,
                 started: dt.datetime | None = None) -> None:
        self.format = GuideLogFormat()
        started = started or dt.datetime.now()
        directory.mkdir(parents=True, exist_ok=True)
        self.path, self._file = _create_new(directory, guide_log_name(started))
        self.write(self.format.banner(version, started))

    def write(self, lines: Iterable[str]) -> None:
        self._file.write("".join(f"{line}\n" for line in lines))
        self._file.flush()

    def close(self, when: dt.datetime | None = None) -> None:
        if self._file.closed:
            return
        self.write(self.format.closed(when or dt.datetime.now()))
        os.fsync(self._file.fileno())
        self._file.close()


def _create_new(directory: Path, name: str) -> tuple[Path, TextIO]:
    stem, suffix = os.path.splitext(name)
    for number in range(1, 1000):
        path = directory / (name if number == 1 else f"{stem}-{number}{suffix}")
        try:
            return path, open(path, "x", encoding="utf-8", newline="\n")
        except FileExistsError:
            continue
    raise FileExistsError(f"no free guide log name for {name} in {directory}")
