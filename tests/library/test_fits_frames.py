"""Single-HDU master frames in PHD2's usImage::Save form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from phdserver.errors import LibraryError
from phdserver.library import as_uint16, fits_text, read_master_frame, write_master_frame


def _image() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 65536, size=(12, 20), dtype=np.uint16)


def _write(path: Path, **kw: object) -> np.ndarray:
    data = _image()
    args: dict[str, object] = {
        "exposure_ms": 15000,
        "frame_count": 25,
        "note": "defect map master",
        "creator": "phdserver 0.1.0",
        "profile_id": 1,
        "binning": 2,
        "bits_per_pixel": 16,
        "gain": 95,
        "camera": "CCD Simulator",
        "pixel_size_um": 3.75,
        "date_obs": "2026-08-20T21:13:05.000",
    }
    args.update(kw)
    write_master_frame(path, data, **args)  # type: ignore[arg-type]
    return data


def test_round_trip_and_header(tmp_path: Path) -> None:
    path = tmp_path / "PHD2_defect_map_master_1.fit"
    data = _write(path, profile_name="My scope", extra_cards=[("IMAGETYP", "Master Dark", "")])
    back, header = read_master_frame(path)
    np.testing.assert_array_equal(back, data)
    assert back.dtype == np.uint16
    with fits.open(path, do_not_scale_image_data=True) as hdul:
        assert len(hdul) == 1
        h = hdul[0].header
    assert (h["BITPIX"], h["BZERO"], h["NAXIS1"], h["NAXIS2"]) == (16, 32768, 20, 12)
    assert h["EXPOSURE"] == 15.0
    assert h.comments["EXPOSURE"] == "Exposure time in seconds"
    assert h["STACKCNT"] == 25
    assert h["USERNOTE"] == "defect map master"
    assert h["DATE"].startswith("20")
    assert "T" in h["DATE"]
    assert h["DATE-OBS"] == "2026-08-20T21:13:05.000"
    assert h["CREATOR"] == "phdserver 0.1.0"
    assert h["PHDPROFI"] == "My scope"
    assert h["INSTRUME"] == "CCD Simulator"
    for key in ("XBINNING", "YBINNING", "CCDXBIN", "CCDYBIN"):
        assert h[key] == 2
    assert h["XPIXSZ"] == h["YPIXSZ"] == 7.5  # with binning, as PHD2 writes it
    assert (h["CAMBPP"], h["GAIN"], h["SATURATE"]) == (16, 95, 65535)
    assert h["IMAGETYP"] == "Master Dark"
    assert header["STACKCNT"] == 25


def test_optional_keywords_are_omitted(tmp_path: Path) -> None:
    path = tmp_path / "m.fit"
    _write(path, frame_count=1, note="", camera=None, pixel_size_um=None, date_obs=None)
    h = fits.getheader(path)
    for key in ("STACKCNT", "USERNOTE", "INSTRUME", "XPIXSZ", "DATE-OBS"):
        assert key not in h
    assert h["PHDPROFI"] == "1"


def test_non_ascii_camera_name_is_made_printable(tmp_path: Path) -> None:
    path = tmp_path / "m.fit"
    _write(path, camera="Caméra\n2")
    assert fits.getheader(path)["INSTRUME"] == "Cam?ra?2"
    assert fits_text("abc~ ") == "abc~ "


def test_exclusive_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "images" / "save_image_1.fit"
    data = _write(path, exclusive=True)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        _write(path, exclusive=True, note="other")
    assert path.read_bytes() == before
    np.testing.assert_array_equal(read_master_frame(path)[0], data)
    assert sorted(p.name for p in path.parent.iterdir()) == ["save_image_1.fit"]
    _write(path, note="replaced")  # not exclusive: atomic replacement
    assert fits.getheader(path)["USERNOTE"] == "replaced"


def test_bad_input_is_refused_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "m.fit"
    with pytest.raises(ValueError, match="uint16"):
        write_master_frame(path, np.zeros((4, 4)), exposure_ms=1, creator="x", profile_id=1)
    with pytest.raises(ValueError, match="bits_per_pixel"):
        write_master_frame(
            path, _image(), exposure_ms=1, creator="x", profile_id=1, bits_per_pixel=0
        )
    assert not path.exists()


def test_read_refuses_multi_hdu_files(tmp_path: Path) -> None:
    path = tmp_path / "m.fit"
    fits.HDUList([fits.PrimaryHDU(_image()), fits.ImageHDU(_image())]).writeto(path)
    with pytest.raises(LibraryError, match="Unsupported type"):
        read_master_frame(path)


@pytest.mark.filterwarnings("ignore::astropy.utils.exceptions.AstropyUserWarning")
def test_read_truncated_or_missing(tmp_path: Path) -> None:
    path = tmp_path / "m.fit"
    with pytest.raises(LibraryError, match="does not exist"):
        read_master_frame(path)
    _write(path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(LibraryError, match="truncated"):
        read_master_frame(path)


def test_as_uint16() -> None:
    assert as_uint16(np.array([[-1, 70000, 5]], dtype=np.int32)).tolist() == [[0, 65535, 5]]
    assert as_uint16(np.array([[np.inf, -np.inf, 0.5]])).tolist() == [[65535, 0, 0]]
    same = np.zeros((2, 2), np.uint16)
    assert as_uint16(same) is same
