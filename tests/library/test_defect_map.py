"""PHD2's defect map text file, byte for byte, and its compatibility check."""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from phdserver.errors import LibraryError
from phdserver.library import (
    DEFECT_MAP_MISMATCH_MESSAGE,
    DefectMapInfo,
    defect_map_compatibility_problem,
    format_defect_map,
    parse_defect_map,
    read_defect_map,
    write_defect_map,
    write_master_frame,
)

INFO = DefectMapInfo(
    generated=datetime(2026, 8, 20, 21, 13, 5, 987654),
    camera="CCD Simulator",
    exposure_ms=15000,
    frame_count=25,
    cold_aggressiveness=75,
    hot_aggressiveness=75,
    cold_sigma=2 ** (3 - 0.06 * 75),
    hot_sigma=2 ** (3 - 0.06 * 75),
    mean=511.5,
    stdev=34.4,
    median=508,
    mad=9,
    delta_cold=-12,
    delta_hot=12,
)

GOLDEN = """\
# PHD2 Defect Map v1
# Generated: 2026-08-20 21:13:05
# Camera: CCD Simulator
# Dark Exposure Time: 15000 ms
# Dark Frame Count: 25
# Aggressiveness, cold: 75
# Aggressiveness, hot: 75
# Sigma Thresh, cold: 0.35
# Sigma Thresh, hot: 0.35
# Mean: 512
# Stdev: 34
# Median: 508
# MAD: 9
# DeltaCold: -12
# DeltaHot: +12
# Defect count: 3
123 45
0 0
7 1023
"""


def test_golden_file(tmp_path: Path) -> None:
    path = tmp_path / "PHD2_defect_map_1.txt"
    write_defect_map(path, INFO, [(123, 45), (0, 0), (7, 1023)])
    assert path.read_bytes() == GOLDEN.encode("ascii")
    assert b"\r" not in path.read_bytes()


def test_numpy_pixels_and_rounding_like_printf() -> None:
    pixels = np.array([[123, 45], [0, 0], [7, 1023]], dtype=np.int32)
    assert format_defect_map(INFO, pixels) == GOLDEN
    # %.f rounds half to even like glibc; %+d shows the sign of zero deltas
    info = dataclasses.replace(INFO, mean=512.5, stdev=33.5, delta_cold=0, delta_hot=0)
    text = format_defect_map(info, np.zeros((0, 2), np.int64))
    assert "# Mean: 512\n# Stdev: 34\n" in text
    assert "# DeltaCold: +0\n# DeltaHot: +0\n# Defect count: 0\n" in text
    assert text.endswith("# Defect count: 0\n")


def test_aware_datetime_is_written_in_local_time() -> None:
    local = datetime(2026, 1, 2, 3, 4, 5)
    aware = local.astimezone()  # the same instant, with the local offset attached
    assert format_defect_map(dataclasses.replace(INFO, generated=aware), []) == (
        format_defect_map(dataclasses.replace(INFO, generated=local), [])
    )


def test_bad_pixel_arrays_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        format_defect_map(INFO, np.zeros((3, 3), np.int64))
    with pytest.raises(ValueError, match="integer"):
        format_defect_map(INFO, [(1.5, 2.0)])


def test_read_back_golden(tmp_path: Path) -> None:
    path = tmp_path / "map.txt"
    path.write_text(GOLDEN)
    contents = read_defect_map(path)
    assert contents.pixels.tolist() == [[123, 45], [0, 0], [7, 1023]]
    assert contents.pixels.dtype == np.int64
    assert contents.ignored_lines == 0
    assert contents.header["Defect count"] == "3"
    assert contents.header["Generated"] == "2026-08-20 21:13:05"
    info = DefectMapInfo.from_header(contents.header)
    assert info.generated == datetime(2026, 8, 20, 21, 13, 5)
    assert (info.cold_sigma, info.mean, info.stdev) == (0.35, 512.0, 34.0)
    assert (
        dataclasses.replace(
            info,
            generated=INFO.generated,
            cold_sigma=INFO.cold_sigma,
            hot_sigma=INFO.hot_sigma,
            mean=INFO.mean,
            stdev=INFO.stdev,
        )
        == INFO
    )


def test_read_like_phd2_skips_comments_blanks_and_junk() -> None:
    text = (
        "# PHD2 Defect Map v1\r\n"
        "\r\n"
        "   # indented comment: yes\r\n"
        "\t10 20\r\n"
        "   \n"
        "junk line\n"
        "1.5 2\n"
        "3\n"
        "4 five\n"
        "+5 -6\n"
        "7 8 9 extra tokens are ignored\n"
        "11\t12\n"
        "0x10 3\n"
        "13 14"  # no final newline
    )
    contents = parse_defect_map(text)
    assert contents.pixels.tolist() == [[10, 20], [5, -6], [7, 8], [11, 12], [13, 14]]
    assert contents.ignored_lines == 5
    assert contents.header == {"indented comment": "yes"}


def test_empty_file_has_no_pixels() -> None:
    contents = parse_defect_map("")
    assert contents.pixels.shape == (0, 2)
    assert contents.ignored_lines == 0


def test_missing_map_file(tmp_path: Path) -> None:
    with pytest.raises(LibraryError, match="does not exist"):
        read_defect_map(tmp_path / "PHD2_defect_map_1.txt")


def test_malformed_header_is_a_library_error() -> None:
    with pytest.raises(LibraryError, match="malformed"):
        DefectMapInfo.from_header({"Generated": "yesterday"})


_ints = st.integers(min_value=-(2**31), max_value=2**31 - 1)
_infos = st.builds(
    DefectMapInfo,
    generated=st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2999, 12, 31)),
    camera=st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
    exposure_ms=st.integers(0, 10**7),
    frame_count=st.integers(1, 1000),
    cold_aggressiveness=st.integers(0, 100),
    hot_aggressiveness=st.integers(0, 100),
    cold_sigma=st.floats(0, 8),
    hot_sigma=st.floats(0, 8),
    mean=st.floats(0, 65535),
    stdev=st.floats(0, 65535),
    median=st.integers(0, 65535),
    mad=st.integers(0, 65535),
    delta_cold=st.integers(-(2**20), 0),
    delta_hot=st.integers(0, 2**20),
)


@given(info=_infos, pixels=st.lists(st.tuples(_ints, _ints), max_size=50))
def test_text_round_trip(info: DefectMapInfo, pixels: list[tuple[int, int]]) -> None:
    text = format_defect_map(info, pixels)
    contents = parse_defect_map(text)
    assert [tuple(p) for p in contents.pixels.tolist()] == pixels
    assert contents.ignored_lines == 0
    assert contents.header["Defect count"] == str(len(pixels))
    back = DefectMapInfo.from_header(contents.header)
    assert back.generated == info.generated.replace(microsecond=0)
    # line breaks in a camera name become spaces; the reader strips the value
    assert back.camera == " ".join(re.split(r"\r\n|\r|\n", info.camera)).strip()
    for name in (
        "exposure_ms",
        "frame_count",
        "cold_aggressiveness",
        "hot_aggressiveness",
        "median",
        "mad",
        "delta_cold",
        "delta_hot",
    ):
        assert getattr(back, name) == getattr(info, name)
    assert abs(back.cold_sigma - info.cold_sigma) <= 0.005 + 1e-9
    assert abs(back.stdev - info.stdev) <= 0.5 + 1e-9
    # the text is exactly one header block and one line per pixel
    assert text.count("\n") == 16 + len(pixels)


# --- compatibility, judged by the master dark as in PHD2 ---------------------------------------


def _master(path: Path, width: int, height: int) -> None:
    write_master_frame(
        path, np.zeros((height, width), np.uint16), exposure_ms=15000, creator="x", profile_id=1
    )


def test_matching_master_is_compatible(tmp_path: Path) -> None:
    master = tmp_path / "PHD2_defect_map_master_1.fit"
    _master(master, 40, 30)
    assert defect_map_compatibility_problem(master, width=40, height=30) is None
    assert defect_map_compatibility_problem(master, width=30, height=40) == (
        DEFECT_MAP_MISMATCH_MESSAGE
    )
    assert DEFECT_MAP_MISMATCH_MESSAGE == (
        "Bad-pixel map does not match the camera in this profile - it needs to be replaced."
    )


def test_missing_master_or_map(tmp_path: Path) -> None:
    master = tmp_path / "PHD2_defect_map_master_1.fit"
    problem = defect_map_compatibility_problem(master, width=40, height=30)
    assert problem is not None
    assert problem.startswith(DEFECT_MAP_MISMATCH_MESSAGE)
    assert "does not exist" in problem
    _master(master, 40, 30)
    map_path = tmp_path / "PHD2_defect_map_1.txt"
    problem = defect_map_compatibility_problem(master, width=40, height=30, map_path=map_path)
    assert problem is not None
    assert "does not exist" in problem
    map_path.write_text(GOLDEN)
    assert defect_map_compatibility_problem(master, width=40, height=30, map_path=map_path) is None


def test_undefined_camera_size_accepts_the_map(tmp_path: Path) -> None:
    assert defect_map_compatibility_problem(tmp_path / "none.fit", width=0, height=0) is None
