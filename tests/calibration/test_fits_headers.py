"""Headers and file names into FrameMetadata: synonyms, numbers as numbers, the night date."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from phdserver.errors import LibraryError
from phdserver.library.fits_headers import (
    FrameType,
    metadata_from_header,
    metadata_from_path,
    night_of,
    normalise_frame_type,
    read_frame_metadata,
    read_hdu_metadata,
)
from tests.calibration import SHAPE, nina_light_name, rig, write_fits


@pytest.mark.parametrize(
    ("text", "expected", "master"),
    [
        ("Master Dark", FrameType.DARK, True),
        ("DARK", FrameType.DARK, False),
        ("Dark Frame", FrameType.DARK, False),
        ("masterDark", FrameType.DARK, True),
        ("MASTERDARK", FrameType.DARK, True),
        ("FLAT", FrameType.FLAT, False),
        ("Flat Field", FrameType.FLAT, False),
        ("masterFlat", FrameType.FLAT, True),
        ("BIAS", FrameType.BIAS, False),
        ("Bias Frame", FrameType.BIAS, False),
        ("Offset", FrameType.BIAS, False),
        ("zero", FrameType.BIAS, False),
        ("LIGHT", FrameType.LIGHT, False),
        ("Light Frame", FrameType.LIGHT, False),
        ("Object", FrameType.LIGHT, False),
        ("DARKFLAT", FrameType.DARK_FLAT, False),
        ("Flat Dark", FrameType.DARK_FLAT, False),
        ("", None, False),
        ("Focus", None, False),
    ],
)
def test_frame_types_are_normalised(text: str, expected: FrameType | None, master: bool) -> None:
    assert normalise_frame_type(text) == (expected, master)


def test_nina_header_is_read_with_types_and_sources() -> None:
    header = fits.Header()
    for key, value in {
        "IMAGETYP": "LIGHT", "EXPOSURE": 300, "EXPTIME": 300.0, "SET-TEMP": -10.0,
        "CCD-TEMP": -9.8, "READOUTM": "High Gain ", "XBINNING": 2, "YBINNING": 2, "GAIN": 100,
        "OFFSET": 50, "FILTER": "Ha", "INSTRUME": "ZWO  ASI2600MM Pro", "TELESCOP": "RedCat",
        "DATE-LOC": "2024-01-16T01:30:00.1234567", "DATE-OBS": "2024-01-16T00:30:00.1234567",
        "SITELONG": 15.0, "NAXIS1": 40, "NAXIS2": 32,
    }.items():
        header[key] = value
    meta = metadata_from_header(header)
    assert meta.frame_type is FrameType.LIGHT
    assert not meta.is_master
    assert meta.exposure_s == 300.0
    assert meta.source_of("exposure_s") == "EXPTIME"
    assert (meta.set_temp_c, meta.ccd_temp_c) == (-10.0, -9.8)
    assert meta.readout_mode == "High Gain"
    assert (meta.binning_x, meta.binning_y) == (2, 2)
    assert (meta.gain, meta.offset) == (100.0, 50.0)
    assert meta.camera == "ZWO ASI2600MM Pro"  # spaces collapsed
    assert meta.date_obs == datetime(2024, 1, 16, 0, 30, 0, 123456, tzinfo=UTC)
    assert meta.night == date(2024, 1, 15)  # 01:30 local belongs to the night of the 15th
    assert meta.source_of("night") == "DATE-LOC - 12 h"
    assert (meta.width, meta.height) == (40, 32)


def test_synonyms_and_numeric_strings_compare_as_numbers() -> None:
    a = metadata_from_header({"EXPOSURE": "300", "SETTEMP": "-10", "BINX": 1, "BINY": "1",
                              "GAIN": "100"})
    b = metadata_from_header({"EXP": 300.0, "SET-TEMP": -10.0, "XBINNING": 1, "YBINNING": 1,
                              "GAIN": 100.0})
    for name in ("exposure_s", "set_temp_c", "binning_x", "binning_y", "gain"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.exposure_s == 300.0


@pytest.mark.parametrize("value", [-273.15, float("nan"), -1.79769313486232e308, "n/a"])
def test_sentinel_temperatures_mean_unrecorded(value: object) -> None:
    assert metadata_from_header({"CCD-TEMP": value}).ccd_temp_c is None


def test_file_name_tokens_fill_only_what_the_header_lacks() -> None:
    path = Path("/data/FILTER_OIII/LIGHT") / nina_light_name(3)
    meta = metadata_from_path(path)
    assert meta.frame_type is FrameType.LIGHT
    assert (meta.exposure_s, meta.gain, meta.set_temp_c, meta.filter) == (300.0, 100.0, -10.0,
                                                                          "Ha")
    assert meta.source_of("exposure_s") == "file name"
    from_header = metadata_from_header({"EXPTIME": 60.0, "IMAGETYP": "FLAT"}, path=path)
    assert from_header.exposure_s == 60.0  # the header wins
    assert from_header.frame_type is FrameType.FLAT
    assert from_header.filter == "Ha"  # the stem is closer than the directory
    assert from_header.source_of("filter") == "file name"


def test_binning_and_readout_tokens() -> None:
    meta = metadata_from_path(Path("masterDark_EXPOSURE_120.00_BIN_2x2_READOUTM_Fast.fits"))
    assert meta.frame_type is FrameType.DARK
    assert meta.is_master
    assert (meta.exposure_s, meta.binning_x, meta.binning_y, meta.readout_mode) == (
        120.0, 2, 2, "Fast")


def test_night_rules() -> None:
    utc = datetime(2024, 1, 16, 5, 0, tzinfo=UTC)  # 21:00 the evening before at 120° W
    assert night_of(utc, longitude_deg=-120.0)[0] == date(2024, 1, 15)
    assert night_of(utc)[0] == date(2024, 1, 15)  # UTC - 12 h
    morning = datetime(2024, 1, 16, 13, 0, tzinfo=UTC)  # 05:00 local at 120° W
    assert night_of(morning, longitude_deg=-120.0)[0] == date(2024, 1, 15)
    assert night_of(morning)[0] == date(2024, 1, 16)  # why the longitude matters
    assert night_of(None) == (None, "")
    local = datetime(2024, 1, 16, 11, 59)
    assert night_of(utc, local_time=local)[0] == date(2024, 1, 15)
    meta = metadata_from_header({"DATE-OBS": "2024-01-16T13:00:00"}, default_longitude_deg=-120)
    assert meta.night == date(2024, 1, 15)
    sexagesimal = metadata_from_header({"DATE-OBS": "2024-01-16T13:00:00",
                                        "SITELONG": "-120 00 00"})
    assert sexagesimal.night == date(2024, 1, 15)


def test_date_only_date_obs_takes_time_obs() -> None:
    meta = metadata_from_header({"DATE-OBS": "2024-01-16", "TIME-OBS": "03:00:00"})
    assert meta.date_obs == datetime(2024, 1, 16, 3, 0, tzinfo=UTC)
    assert meta.night == date(2024, 1, 15)


def test_bias_subtracted_markers() -> None:
    assert not metadata_from_header({"IMAGETYP": "Master Dark"}).bias_subtracted
    assert metadata_from_header({"BIASSUB": True}).bias_subtracted
    assert metadata_from_header({"SUBBIAS": "ccd=<CCDData>, master=<CCDData>"}).bias_subtracted
    assert metadata_from_header({"CALSTAT": "BM"}).bias_subtracted


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")
def test_unquoted_date_card_of_old_nina_is_read(tmp_path: Path) -> None:
    cards = ["SIMPLE  =                    T", "BITPIX  =                   16",
             "NAXIS   =                    2", "NAXIS1  =                    4",
             "NAXIS2  =                    2", "IMAGETYP= 'LIGHT'",
             "DATE-LOC= 2024-01-15T23:41:48.288 / Time of observation (local)", "END"]
    header = "".join(c.ljust(80) for c in cards).ljust(2880)
    path = tmp_path / "old.fits"
    path.write_bytes(header.encode("ascii") + bytes(2880))
    meta = read_frame_metadata(path)
    assert meta.frame_type is FrameType.LIGHT
    assert meta.night == date(2024, 1, 15)


def test_read_hdu_metadata_lists_each_image(tmp_path: Path) -> None:
    hdus = fits.HDUList([fits.PrimaryHDU(np.zeros(SHAPE, np.uint16)),
                         fits.ImageHDU(np.zeros(SHAPE, np.uint16))])
    hdus[0].header["EXPOSURE"] = 1.0
    hdus[1].header["EXPOSURE"] = 2.0
    hdus.writeto(tmp_path / "lib.fit")
    found = read_hdu_metadata(tmp_path / "lib.fit")
    assert [(i, m.exposure_s) for i, m in found] == [(0, 1.0), (1, 2.0)]
    with pytest.raises(LibraryError):
        read_frame_metadata(tmp_path / "lib.fit", hdu=5)
    with pytest.raises(LibraryError):
        read_frame_metadata(tmp_path / "missing.fits")


def test_to_json_is_plain(tmp_path: Path) -> None:
    import json

    path = write_fits(tmp_path / "x.fits", np.zeros(SHAPE, np.uint16),
                      **rig(IMAGETYP="LIGHT", DATE_OBS="2024-01-15T22:00:00"))
    as_json = read_frame_metadata(path).to_json()
    assert json.loads(json.dumps(as_json)) == as_json
    assert as_json["night"] == "2024-01-15"
    assert as_json["frame_type"] == "light"
