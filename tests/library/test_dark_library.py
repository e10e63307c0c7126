"""PHD2's dark library file: we load what PHD2 writes, PHD2 loads what we write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from phdserver.errors import LibraryError
from phdserver.library import (
    INCOMPATIBLE_FORMATS_MESSAGE,
    LIBRARY_MISMATCH_MESSAGE,
    DarkFrame,
    DarkLibrary,
    compatibility_problem,
    read_dark_library,
    write_dark_library,
)

W, H = 24, 16
IGNORE_ASTROPY_WARNINGS = pytest.mark.filterwarnings(
    "ignore::astropy.utils.exceptions.AstropyUserWarning"
)


def _image(seed: int, width: int = W, height: int = H) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 65536, size=(height, width), dtype=np.uint16)
    data[0, 0], data[0, 1] = 0, 65535  # both ends of the BZERO range
    return data


def _frame(exposure_ms: int, **kw: object) -> DarkFrame:
    return DarkFrame(data=_image(exposure_ms), exposure_ms=exposure_ms, **kw)  # type: ignore[arg-type]


def _full_frame(exposure_ms: int) -> DarkFrame:
    return _frame(
        exposure_ms,
        binning=2,
        bits_per_pixel=16,
        gain=95,
        note="cooled to -10",
        frame_count=5,
        temperature_c=-10.2,
        set_temperature_c=-10.0,
        date_obs="2026-08-20T21:13:05.250",
        combine="mean",
        camera="CCD Simulator",
    )


def _library(*exposures: int) -> DarkLibrary:
    return DarkLibrary.from_frames(_full_frame(e) for e in exposures)


def _write_phd2_style(path: Path, exposures: list[float | None], **extra: object) -> None:
    """A file as old PHD2 versions write it: USHORT images with EXPOSURE (and USERNOTE) only."""
    hdus: list[fits.PrimaryHDU | fits.ImageHDU] = []
    for i, exposure_s in enumerate(exposures):
        data = _image(i)
        hdu = fits.PrimaryHDU(data) if i == 0 else fits.ImageHDU(data)
        if exposure_s is not None:
            hdu.header["EXPOSURE"] = (np.float32(exposure_s).item(), "Exposure time in seconds")
        for key, value in extra.items():
            hdu.header[key] = value
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(path)


# --- round trip and the file as PHD2 sees it -------------------------------------------------


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    path = tmp_path / "PHD2_dark_lib_1.fit"
    lib = _library(1000, 10, 15000, 500)
    write_dark_library(path, lib, creator="phdserver 0.1.0")
    back = read_dark_library(path)
    assert back == lib
    assert back.exposures == (10, 500, 1000, 15000)
    assert (back.width, back.height, back.binning, back.bits_per_pixel) == (W, H, 2, 16)
    assert back.note == "cooled to -10"


def test_file_layout_is_phd2s(tmp_path: Path) -> None:
    path = tmp_path / "lib.fit"
    write_dark_library(path, _library(2500, 100, 10), creator="phdserver 0.1.0")
    with fits.open(path, do_not_scale_image_data=True) as hdul:
        assert [type(h) for h in hdul] == [fits.PrimaryHDU, fits.ImageHDU, fits.ImageHDU]
        assert [h.header["EXPOSURE"] for h in hdul] == [0.01, 0.1, 2.5]
        for h in hdul:
            hdr = h.header
            assert hdr["BITPIX"] == 16
            assert hdr["BZERO"] == 32768
            assert hdr.get("BSCALE", 1) == 1
            assert (hdr["NAXIS"], hdr["NAXIS1"], hdr["NAXIS2"]) == (2, W, H)
            assert "EXTNAME" not in hdr
            assert hdr.comments["EXPOSURE"] == "Exposure time in seconds"
            assert (hdr["XBINNING"], hdr["YBINNING"]) == (2, 2)
            assert hdr["SATURATE"] == 65535
            assert hdr["GAIN"] == 95
            assert isinstance(hdr["GAIN"], int)
            assert hdr["USERNOTE"] == "cooled to -10"
            assert hdr["NCOMBINE"] == 5
            assert hdr["CCD-TEMP"] == pytest.approx(-10.2)
            assert hdr["SET-TEMP"] == pytest.approx(-10.0)
            assert hdr["DATE-OBS"] == "2026-08-20T21:13:05.250"
            assert hdr["IMAGETYP"] == "Master Dark"
            assert hdr["CREATOR"] == "phdserver 0.1.0"
            assert hdr["COMBMETH"] == "mean"
            assert hdr["INSTRUME"] == "CCD Simulator"
            # stored as signed int16 with BZERO: 0 is -32768, 65535 is 32767
            assert h.data.dtype.kind == "i"
            assert (int(h.data[0, 0]), int(h.data[0, 1])) == (-32768, 32767)
    with fits.open(path) as hdul:
        assert hdul[1].data.dtype == np.uint16
        np.testing.assert_array_equal(hdul[1].data, _image(100))


def test_minimal_frames_write_only_what_they_have(tmp_path: Path) -> None:
    path = tmp_path / "lib.fit"
    write_dark_library(path, DarkLibrary(frames=(_frame(1000, bits_per_pixel=8),)), creator="x")
    hdr = fits.getheader(path)
    for key in ("USERNOTE", "NCOMBINE", "CCD-TEMP", "SET-TEMP", "DATE-OBS", "COMBMETH", "INSTRUME"):
        assert key not in hdr
    assert (hdr["EXPOSURE"], hdr["XBINNING"], hdr["SATURATE"], hdr["GAIN"]) == (1.0, 1, 255, 0)
    assert read_dark_library(path).bits_per_pixel == 8


def test_note_longer_than_phd2s_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lib.fit"
    write_dark_library(path, DarkLibrary(frames=(_frame(10, note="n" * 65),)), creator="x")
    assert fits.getheader(path)["USERNOTE"] == "n" * 65
    with pytest.raises(ValueError, match="65"):
        write_dark_library(path, DarkLibrary(frames=(_frame(10, note="n" * 66),)), creator="x")
    with pytest.raises(ValueError, match="ASCII"):
        write_dark_library(path, DarkLibrary(frames=(_frame(10, note="température"),)), "x")
    assert fits.getheader(path)["USERNOTE"] == "n" * 65  # the previous file is intact


# --- files written by PHD2 -------------------------------------------------------------------


def test_library_with_only_exposure_loads(tmp_path: Path) -> None:
    path = tmp_path / "PHD2_dark_lib_1.fit"
    # float32 values, as cfitsio's TFLOAT writes them: 0.01 is 0.0099999998
    _write_phd2_style(path, [0.01, 0.1, 1.0, 1.5, 15.0], USERNOTE="old library")
    lib = read_dark_library(path)
    assert lib.exposures == (10, 100, 1000, 1500, 15000)
    f = lib.frames[0]
    assert (f.binning, f.bits_per_pixel, f.gain, f.note) == (1, 16, 0, "old library")
    assert not f.binning_recorded
    assert not f.bits_per_pixel_recorded
    assert not f.gain_recorded
    assert f.frame_count is None
    assert f.camera is None
    np.testing.assert_array_equal(f.data, _image(0))
    # judged on size alone, as PHD2 judges it
    assert compatibility_problem(lib, width=W, height=H, binning=2, bits_per_pixel=8) is None


def test_phd2_pr1379_keywords_are_read(tmp_path: Path) -> None:
    path = tmp_path / "lib.fit"
    _write_phd2_style(path, [1.0, 2.0], XBINNING=0, YBINNING=0, SATURATE=255, GAIN=42)
    f = read_dark_library(path).frames[1]
    assert (f.binning, f.bits_per_pixel, f.gain) == (1, 8, 42)  # XBINNING 0 reads as 1
    assert f.binning_recorded
    assert f.bits_per_pixel_recorded
    assert f.gain_recorded


def test_legacy_frames_stay_unrecorded_when_merged_and_written(tmp_path: Path) -> None:
    path = tmp_path / "lib.fit"
    _write_phd2_style(path, [1.0, 2.0])
    merged = read_dark_library(path).merged_with(DarkLibrary(frames=(_frame(1500),)))
    write_dark_library(path, merged, creator="x")
    with fits.open(path) as hdul:
        assert ["XBINNING" in h.header for h in hdul] == [False, True, False]
        assert ["SATURATE" in h.header for h in hdul] == [False, True, False]
    assert read_dark_library(path) == merged


def test_exposure_is_rounded_like_phd2(tmp_path: Path) -> None:
    """PHD2's ROUNDF rounds halves up; Python's round() would give 2 and 10."""
    path = tmp_path / "lib.fit"
    hdus = [fits.PrimaryHDU(_image(0))] + [fits.ImageHDU(_image(i)) for i in (1, 2)]
    for hdu, exposure_s in zip(hdus, [0.0025, 0.0105, 2.4996], strict=True):
        hdu.header["EXPOSURE"] = exposure_s
    fits.HDUList(hdus).writeto(path)
    assert read_dark_library(path).exposures == (3, 11, 2500)


def test_duplicate_exposures_keep_the_last(tmp_path: Path) -> None:
    path = tmp_path / "lib.fit"
    _write_phd2_style(path, [1.0, 2.0, 1.0])
    lib = read_dark_library(path)
    assert lib.exposures == (1000, 2000)
    np.testing.assert_array_equal(lib.frame_for(1000).data, _image(2))


def test_missing_exposure_names_the_hdu(tmp_path: Path) -> None:
    path = tmp_path / "lib.fit"
    _write_phd2_style(path, [1.0, None])
    with pytest.raises(LibraryError, match="HDU 1 has no valid EXPOSURE"):
        read_dark_library(path)


def test_frames_of_different_sizes_are_refused_with_phd2s_message(tmp_path: Path) -> None:
    path = tmp_path / "lib.fit"
    hdus = [fits.PrimaryHDU(_image(0)), fits.ImageHDU(_image(1, width=W + 1))]
    for h in hdus:
        h.header["EXPOSURE"] = 1.0
    fits.HDUList(hdus).writeto(path)
    with pytest.raises(LibraryError) as info:
        read_dark_library(path)
    assert info.value.message == INCOMPATIBLE_FORMATS_MESSAGE


@pytest.mark.parametrize(
    "second",
    [
        fits.ImageHDU(np.zeros((2, H, W), np.uint16)),
        fits.ImageHDU(),
        fits.BinTableHDU.from_columns([fits.Column(name="a", format="J", array=[1, 2])]),
    ],
    ids=["3-D", "empty", "table"],
)
def test_non_image_hdus_are_refused(tmp_path: Path, second: fits.hdu.base.ExtensionHDU) -> None:
    path = tmp_path / "lib.fit"
    primary = fits.PrimaryHDU(_image(0))
    primary.header["EXPOSURE"] = 1.0
    second.header["EXPOSURE"] = 2.0
    fits.HDUList([primary, second]).writeto(path)
    with pytest.raises(LibraryError, match="incompatible formats"):
        read_dark_library(path)


def test_other_pixel_types_are_converted_like_cfitsio(tmp_path: Path) -> None:
    path = tmp_path / "lib.fit"
    data = np.array([[-5.0, 1.4, np.nan], [70000.0, 2.6, 65535.0]], dtype=np.float32)
    hdu = fits.PrimaryHDU(data)
    hdu.header["EXPOSURE"] = 1.0
    hdu.writeto(path)
    frame = read_dark_library(path).frames[0]
    assert frame.data.dtype == np.uint16
    assert frame.data.tolist() == [[0, 1, 0], [65535, 3, 65535]]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LibraryError, match="does not exist"):
        read_dark_library(tmp_path / "PHD2_dark_lib_1.fit")


@IGNORE_ASTROPY_WARNINGS
@pytest.mark.parametrize("keep", [0.999, 0.75, 0.5, 0.34, 0.01, 0.0])
def test_truncated_file_is_a_library_error(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "lib.fit"
    write_dark_library(path, _library(10, 100, 1000), creator="x")
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(LibraryError):
        read_dark_library(path)


@IGNORE_ASTROPY_WARNINGS
@pytest.mark.parametrize(
    "content", [b"not a fits file at all\n" * 200, bytes(5760), b"SIMPLE  =    T" + b" " * 2866]
)
def test_garbage_is_a_library_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "lib.fit"
    path.write_bytes(content)
    with pytest.raises(LibraryError):
        read_dark_library(path)


# --- records -----------------------------------------------------------------------------------


def test_frame_for_follows_phd2s_selection() -> None:
    lib = _library(100, 1000, 2000)
    assert [lib.frame_for(e).exposure_ms for e in (1, 100, 101, 1000, 1500, 2000, 30000)] == [
        100,
        100,
        1000,
        1000,
        2000,
        2000,
        2000,
    ]


def test_merged_with_replaces_equal_exposures_and_keeps_others() -> None:
    old = _library(100, 1000, 2000)
    replacement = DarkFrame(data=_image(7), exposure_ms=1000, note="new")
    new = DarkLibrary.from_frames([replacement, _frame(3000)])
    merged = old.merged_with(new)
    assert merged.exposures == (100, 1000, 2000, 3000)
    assert merged.frame_for(1000) == replacement
    assert merged.frames[0] == old.frames[0]
    assert merged.frames[2] == old.frames[2]
    with pytest.raises(ValueError, match="same size"):
        old.merged_with(DarkLibrary(frames=(DarkFrame(data=_image(1, W, W), exposure_ms=5),)))


def test_with_note_sets_every_frame() -> None:
    lib = _library(100, 1000).with_note("rebuilt")
    assert [f.note for f in lib.frames] == ["rebuilt", "rebuilt"]


def test_library_validation() -> None:
    a, b = _frame(100), _frame(200)
    with pytest.raises(ValueError, match="ascending"):
        DarkLibrary(frames=(b, a))
    with pytest.raises(ValueError, match="ascending"):
        DarkLibrary.from_frames([a, _frame(100)])
    with pytest.raises(ValueError, match="at least one"):
        DarkLibrary(frames=())
    assert DarkLibrary.from_frames([b, a]).exposures == (100, 200)


def test_frame_validation_and_read_only_data() -> None:
    data = _image(0)
    frame = DarkFrame(data=data, exposure_ms=10)
    with pytest.raises(ValueError, match="read-only"):
        frame.data[0, 0] = 1
    assert frame == DarkFrame(data=data.copy(), exposure_ms=10)
    assert frame != DarkFrame(data=data + 1, exposure_ms=10)
    assert frame != DarkFrame(data=data, exposure_ms=10, gain=1)
    with pytest.raises(ValueError, match="uint16"):
        DarkFrame(data=data.astype(np.int32), exposure_ms=10)
    with pytest.raises(ValueError, match="2-D"):
        DarkFrame(data=data.ravel(), exposure_ms=10)
    with pytest.raises(ValueError, match="bits_per_pixel"):
        DarkFrame(data=data, exposure_ms=10, bits_per_pixel=17)
    with pytest.raises(ValueError, match="binning"):
        DarkFrame(data=data, exposure_ms=10, binning=0)


# --- compatibility -----------------------------------------------------------------------------


def test_compatible_library() -> None:
    lib = _library(100, 1000)
    assert compatibility_problem(lib, width=W, height=H) is None
    assert compatibility_problem(lib, width=W, height=H, binning=2, bits_per_pixel=16) is None
    # a 12-bit camera reads back as 16-bit in PHD2's terms
    assert compatibility_problem(lib, width=W, height=H, bits_per_pixel=12) is None


def test_size_mismatch_gives_phd2s_message() -> None:
    lib = _library(100)
    assert compatibility_problem(lib, width=W * 2, height=H * 2, binning=2) == (
        LIBRARY_MISMATCH_MESSAGE
    )
    assert compatibility_problem(lib, width=H, height=W) == LIBRARY_MISMATCH_MESSAGE
    assert LIBRARY_MISMATCH_MESSAGE == (
        "Dark library does not match the camera in this profile. Check that you are connected "
        "to the camera you want to use for guiding."
    )


def test_undefined_camera_size_skips_the_size_check() -> None:
    assert compatibility_problem(_library(100), width=0, height=0) is None


def test_binning_and_depth_mismatch_say_what_differs() -> None:
    lib = _library(100)  # binning 2, 16 bits
    assert compatibility_problem(lib, width=W, height=H, binning=1) == (
        LIBRARY_MISMATCH_MESSAGE + " (library binning 2, camera binning 1)"
    )
    assert compatibility_problem(lib, width=W, height=H, bits_per_pixel=8) == (
        LIBRARY_MISMATCH_MESSAGE + " (library bit depth 16, camera bit depth 8)"
    )
    assert compatibility_problem(lib, width=W, height=H, binning=1, bits_per_pixel=8) == (
        LIBRARY_MISMATCH_MESSAGE
        + " (library binning 2, camera binning 1; library bit depth 16, camera bit depth 8)"
    )
