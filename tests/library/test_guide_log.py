"""The guide log reads back the way PHD2 Log Viewer reads PHD2's.

The reader here follows the Log Viewer's rules (its parser's prefixes and column order, read
for facts): sections start at ``Guiding Begins at`` / ``Calibration Begins at``; a guiding
section's rows follow the ``Frame,Time,mount`` heading and end at an empty line or ``Guiding
Ends``; RA durations are negative for West, Dec for South; a row with an error code and no
star mass is a dropped frame; the mount line carries the calibration, ``Pixel scale =`` the
scale and ``X guide algorithm =`` the minimum move.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

from phdserver.library.guide_log import GUIDE_COLUMNS, GuideLog, GuideLogHeader, guide_log_name

START = dt.datetime(2026, 12, 5, 21, 30, 5)
HEADER = GuideLogHeader(
    profile="Simulator", camera="Simulator", exposure_ms=2000, mount="Simulator mount",
    pixel_scale=1.03, focal_length_mm=750, calibration=(12.5, 7.812, 102.4, 7.5),
    lock=(320.25, 240.5), star=(320.0, 240.0), hfd=2.41,
    settings=(("X guide algorithm", "Hysteresis, Minimum move = 0.150, Hysteresis = 0.100"),
              ("Y guide algorithm", "Resist Switch, Minimum move = 0.200"),
              ("Max RA duration", "2000, Max DEC duration = 2500")),
)


def _number(text: str, key: str) -> float:
    match = re.search(re.escape(key) + r"(-?[\d.]+)", text)
    assert match, (key, text)
    return float(match.group(1))


def read_like_the_log_viewer(text: str) -> dict[str, Any]:
    state = "skip"
    out: dict[str, Any] = {"sessions": [], "calibrations": [], "version": None}
    session: dict[str, Any] = {}
    for line in text.split("\n"):
        if state == "skip":
            if line.startswith("Guiding Begins at "):
                session = {"begins": line.removeprefix("Guiding Begins at "), "rows": [],
                           "dropped": 0, "infos": []}
                out["sessions"].append(session)
                state = "guiding header"
            elif line.startswith("Calibration Begins at "):
                out["calibrations"].append({"steps": []})
                state = "calibration header"
            elif line.startswith("PHD2 version "):
                out["version"] = line.removeprefix("PHD2 version ").split(", Log version ")[0]
        elif state == "guiding header":
            if line.startswith("Frame,Time,mount"):
                state = "guiding"
            elif line.startswith("Mount = "):
                session["x_angle"] = _number(line, ", xAngle = ")
                session["y_rate"] = _number(line, ", yRate = ")
            elif line.startswith("Pixel scale = "):
                session["scale"] = _number(line, "Pixel scale = ")
            elif line.startswith("X guide algorithm = "):
                session["x_min_move"] = _number(line, "Minimum move = ")
            elif "Max RA duration = " in line:
                session["max_dec"] = _number(line, "Max DEC duration = ")
        elif state == "guiding":
            if not line.strip() or line.startswith("Guiding Ends"):
                state = "skip"
            elif line[0] in "123456789":
                cells = line.split(",")
                ra = int(cells[9] or 0) * (-1 if cells[10] == "W" else 1)
                dec = int(cells[11] or 0) * (-1 if cells[12] == "S" else 1)
                mass, err = int(cells[15] or 0), int(cells[17] or 0)
                if err and mass == 0:
                    session["dropped"] += 1
                else:
                    session["rows"].append((int(cells[0]), float(cells[1]), float(cells[5]),
                                            float(cells[6]), ra, dec, mass, float(cells[16])))
            elif line.startswith("INFO: "):
                session["infos"].append(line.removeprefix("INFO: "))
        elif state == "calibration header":
            if line.startswith("Direction,Step,dx,dy,x,y,Dist"):
                state = "calibrating"
        elif state == "calibrating":
            if line.startswith("Calibration complete"):
                state = "skip"
            elif line.split(",")[0] in ("West", "East", "Backlash", "North", "South"):
                direction, step, dx, dy, *_ = line.split(",")
                out["calibrations"][-1]["steps"].append((direction, int(step), float(dx),
                                                         float(dy)))
    return out


def _step(frame: int, ra_ms: int, ra_dir: str, dec_ms: int, dec_dir: str) -> dict[str, Any]:
    return {"Frame": frame, "Time": 2.0 * frame, "dx": 0.5, "dy": -0.25, "RADistanceRaw": 0.61,
            "DECDistanceRaw": -0.125, "RADistanceGuide": 0.42, "DECDistanceGuide": 0.0,
            "RADuration": ra_ms, "RADirection": ra_dir, "DECDuration": dec_ms,
            "DECDirection": dec_dir, "StarMass": 12345.6, "SNR": 41.237, "ErrorCode": 0}


def test_a_night_reads_back_as_the_log_viewer_reads_it(tmp_path: Path) -> None:
    log = GuideLog(tmp_path, version="0.9", started=START)
    f = log.format
    log.write(f.calibration_begins(HEADER, START))
    for step in range(3):
        log.write(f.calibration_step("West", step, 2.0 * step, 0.5 * step, 320 + 2.0 * step,
                                     240.0, 2.06 * step))
    log.write(f.axis_complete("West", 12.5, 7.812, "Even"))
    log.write(f.calibration_step("North", 0, 0.0, 0.0, 320.0, 240.0, 0.0))
    log.write(f.calibration_complete("Simulator mount"))
    log.write(f.guiding_begins(HEADER, START + dt.timedelta(minutes=2)))
    log.write(f.guide_step(_step(1, 150, "West", 0, "North")))
    log.write(f.guide_step(_step(2, 80, "East", 120, "South")))
    log.write(f.frame_dropped(3, 6.0, 0, 0.0, 2, 'Star lost - "low" SNR'))
    log.write(f.dithered(3.0, -1.5, (323.25, 239.0)))
    log.write(f.settling("Settling started"))
    log.write(f.guide_step(_step(4, 0, "East", 0, "North")))
    log.write(f.guiding_ends(START + dt.timedelta(minutes=3)))
    log.close(START + dt.timedelta(minutes=4))

    assert log.path == tmp_path / "PHD2_GuideLog_2026-12-05_213005.txt"
    text = log.path.read_text()
    assert text.startswith("PHD2 version phdserver-0.9, Log version 2.5. Log enabled at "
                           "2026-12-05 21:30:05\n")
    assert GUIDE_COLUMNS in text.split("\n")
    assert text.endswith("\nLog closed at 2026-12-05 21:34:05\n")
    parsed = read_like_the_log_viewer(text)
    assert parsed["version"] == "phdserver-0.9"
    [calibration] = parsed["calibrations"]
    assert [s[0] for s in calibration["steps"]] == ["West", "West", "West", "North"]
    [session] = parsed["sessions"]
    assert session["begins"] == "2026-12-05 21:32:05"
    assert (session["scale"], session["x_angle"], session["y_rate"]) == (1.03, 12.5, 7.5)
    assert (session["x_min_move"], session["max_dec"]) == (0.15, 2500)
    assert session["rows"] == [
        (1, 2.0, 0.61, -0.125, -150, 0, 12346, 41.24),
        (2, 4.0, 0.61, -0.125, 80, -120, 12346, 41.24),
        (4, 8.0, 0.61, -0.125, 0, 0, 12346, 41.24),
    ]
    assert session["dropped"] == 1
    assert session["infos"] == ["DITHER by 3.000, -1.500, new lock pos = 323.250, 239.000",
                                "SETTLING STATE CHANGE, Settling started"]
    row = next(line for line in text.split("\n") if line.startswith("1,"))
    assert len(row.split(",")) == len(GUIDE_COLUMNS.split(","))


def test_a_second_log_in_the_same_second_never_overwrites_the_first(tmp_path: Path) -> None:
    existing = tmp_path / guide_log_name(START)
    existing.write_text("someone's log\n")
    first = GuideLog(tmp_path, version="0.9", started=START)
    second = GuideLog(tmp_path, version="0.9", started=START)
    assert existing.read_text() == "someone's log\n"
    assert first.path.name == "PHD2_GuideLog_2026-12-05_213005-2.txt"
    assert second.path.name == "PHD2_GuideLog_2026-12-05_213005-3.txt"
    first.close()
    second.close()
    second.close()  # closing twice is harmless
