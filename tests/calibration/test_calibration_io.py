"""FITS I/O for calibration: the fast light reader, the output header and the writer."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from phdserver.errors import LibraryError
from phdserver.imaging.calibration import QualityFigures
from phdserver.pipeline.calibration_io import (
    MasterUse,
    Provenance,
    calibrated_header,
    open_light,
    output_path_for,
    quality_cards,
    read_light,
    read_light_header,
    read_master,
    write_calibrated,
    write_calibrated_bands,
)
from tests.calibration import SHAPE

QUALITY = QualityFigures(median=1.5, noise=2.0, negative_fraction=0.01, nan_fraction=0.0,
                         samples=100)


def _provenance(**changes: object) -> Provenance:
    fields: dict[str, object] = {
        "masters": (MasterUse(kind="dark", name="d.fits", checksum="ab" * 32),),
        "steps": ("dark subtracted",), "quality": QUALITY, "dark_scale": 1.0,
        "date": datetime(2024, 1, 16, 8, 0, tzinfo=UTC),
    }
    fields.update(changes)
    return Provenance(**fields)  # type: ignore[arg-type]


def test_uint16_lights_are_read_as_stored_values(tmp_path: Path) -> None:
    data = np.arange(SHAPE[0] * SHAPE[1], dtype=np.uint16).reshape(SHAPE) * 50
    path = tmp_path / "l.fits"
    fits.PrimaryHDU(data).writeto(path)
    light = read_light(path)
    assert light.data.dtype == np.dtype(">i2")
    assert light.zero == 32768
    assert np.array_equal(light.data.astype(np.int64) + light.zero, data)
    assert light.header["BITPIX"] == 16
    signed = tmp_path / "s.fits"
    fits.PrimaryHDU(data.astype(np.int16) - 5000).writeto(signed)
    assert read_light(signed).zero == 0


def test_other_encodings_come_back_physical(tmp_path: Path) -> None:
    physical = np.linspace(0, 60000, SHAPE[0] * SHAPE[1]).reshape(SHAPE)
    hdu = fits.PrimaryHDU(physical.astype(np.float32))
    hdu.scale("int16", bscale=2.0, bzero=30000.0)
    hdu.writeto(tmp_path / "scaled.fits")
    light = read_light(tmp_path / "scaled.fits")
    assert light.data.dtype == np.float32
    assert light.zero == 0
    assert np.allclose(light.data, physical, atol=1.0)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(physical.astype(np.float32))]).writeto(
        tmp_path / "ext.fits")
    assert np.array_equal(read_light(tmp_path / "ext.fits").data, physical.astype(np.float32))
    assert read_light_header(tmp_path / "ext.fits")["NAXIS1"] == SHAPE[1]


def test_broken_inputs_raise_library_errors(tmp_path: Path) -> None:
    path = tmp_path / "l.fits"
    fits.PrimaryHDU(np.zeros(SHAPE, np.uint16)).writeto(path)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.warns(Warning, match="truncated"), pytest.raises(LibraryError, match="truncated"):
        read_light(path)
    with pytest.raises(LibraryError, match="does not exist"):
        read_light(tmp_path / "missing.fits")
    table = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="a", format="J", array=np.arange(3))])]).writeto(table)
    with pytest.raises(LibraryError, match="no 2-D image"):
        read_light(table)
    fits.PrimaryHDU(np.zeros(SHAPE, np.float32)).writeto(tmp_path / "m.fits")
    with pytest.raises(LibraryError, match="not a 2-D image"):
        read_master(tmp_path / "m.fits", hdu=3)


def test_the_output_header_keeps_the_lights_cards(tmp_path: Path) -> None:
    original = fits.Header()
    original["BITPIX"] = 16
    original["NAXIS"] = 2
    original["NAXIS1"] = SHAPE[1]
    original["NAXIS2"] = SHAPE[0]
    original["BZERO"] = 32768
    original["CHECKSUM"] = "stale"
    original["DATASUM"] = "0"
    original["CALIBRAT"] = False
    original["OBJECT"] = "M31 " + "x" * 90  # a long string: CONTINUE cards
    original["HIERARCH ESO DET TEMP"] = -10.5
    original.add_comment("a comment")
    original.add_history("an earlier step")
    header = calibrated_header(original, SHAPE, _provenance(bad_flat_pixels=0))
    assert header["BITPIX"] == -32
    for gone in ("BZERO", "CHECKSUM", "DATASUM"):
        assert gone not in header
    assert header["CALIBRAT"] is True
    assert list(header.keys()).count("CALIBRAT") == 1
    assert header["OBJECT"] == original["OBJECT"]
    assert header["ESO DET TEMP"] == -10.5
    assert "a comment" in str(header["COMMENT"])
    history = [str(h) for h in header["HISTORY"]]
    assert history[0] == "an earlier step"
    assert history[-1].endswith("dark subtracted")
    assert header["CALDATE"] == "2024-01-16T08:00:00"
    assert header["DARKHASH"] == "ab" * 32
    assert header["CALMED"] == 1.5
    nan = calibrated_header(original, SHAPE, _provenance(
        quality=QualityFigures(median=float("nan"), noise=float("nan"), negative_fraction=0.0,
                               nan_fraction=1.0, samples=4)))
    assert nan["CALMED"] == "NaN"


def test_write_refuses_the_light_and_never_overwrites_unless_asked(tmp_path: Path) -> None:
    data = np.arange(SHAPE[0] * SHAPE[1], dtype=np.float32).reshape(SHAPE)
    header = calibrated_header(fits.Header(), SHAPE, _provenance())
    path = tmp_path / "out.fits"
    write_calibrated(path, data.astype(">f4"), header)
    with fits.open(path) as hdul:
        hdul.verify("exception")
        assert np.array_equal(hdul[0].data, data)
    assert path.stat().st_size % 2880 == 0
    with pytest.raises(FileExistsError):
        write_calibrated(path, data, header)
    write_calibrated(path, data + 1, header, overwrite=True)  # native order is converted
    assert np.array_equal(fits.getdata(path), data + 1)
    with pytest.raises(LibraryError, match="over its light"):
        write_calibrated(path, data, header, overwrite=True, source=path)
    with pytest.raises(ValueError, match="float32"):
        write_calibrated(tmp_path / "x.fits", data.astype(np.float64), header)
    assert [p.name for p in tmp_path.iterdir()] == ["out.fits"]  # no temporary files left


def test_band_writer_refuses_bands_that_do_not_make_the_image(tmp_path: Path) -> None:
    header = calibrated_header(fits.Header(), SHAPE, _provenance())
    band = np.zeros((10, SHAPE[1]), ">f4")
    cases = {
        "rows": [band, band],  # 20 of 32 rows
        "wide": [np.zeros((32, SHAPE[1] + 1), ">f4")],
        "float32": [band.astype(np.float64)],
    }
    for name, bands in cases.items():
        with pytest.raises(ValueError, match=name):
            write_calibrated_bands(tmp_path / f"{name}.fits", SHAPE, iter(bands), header)
    whole = [np.zeros(SHAPE, ">f4")]
    with pytest.raises(ValueError, match="no room reserved"):
        write_calibrated_bands(tmp_path / "new.fits", SHAPE, iter(whole), header,
                               final_cards=lambda: [("NEWCARD", 1, "")])
    with pytest.raises(ValueError, match="differs in size"):
        write_calibrated_bands(tmp_path / "grown.fits", SHAPE, iter(whole), header,
                               final_cards=lambda: [("CALSOFT", "x" * 4000, "")])
    with pytest.raises(ValueError, match="NAXIS"):
        write_calibrated_bands(tmp_path / "naxis.fits", (SHAPE[0] + 1, SHAPE[1]), iter(whole),
                               header)
    assert list(tmp_path.iterdir()) == []  # neither outputs nor temporary files


def test_band_writer_sets_the_final_cards_in_the_header(tmp_path: Path) -> None:
    header = calibrated_header(fits.Header(), SHAPE, _provenance())
    final = QualityFigures(median=7.25, noise=1.0, negative_fraction=0.5, nan_fraction=0.25,
                           samples=4)
    data = np.arange(SHAPE[0] * SHAPE[1], dtype=np.float32).reshape(SHAPE)
    bands = (data[start:start + 7] for start in range(0, SHAPE[0], 7))  # native, 5 bands
    write_calibrated_bands(tmp_path / "out.fits", SHAPE, bands, header,
                           final_cards=lambda: quality_cards(final))
    with fits.open(tmp_path / "out.fits") as hdul:
        hdul.verify("exception")
        assert hdul[0].header["CALMED"] == 7.25
        assert hdul[0].header["CALNANFR"] == 0.25
        assert hdul[0].header.comments["CALMED"] == "median of the calibrated frame"
        assert np.array_equal(hdul[0].data, data)
    assert header["CALMED"] == QUALITY.median  # the caller's header is not changed


def test_light_reader_reads_bands_and_notices_a_file_cut_short(tmp_path: Path) -> None:
    physical = np.arange(SHAPE[0] * SHAPE[1], dtype=np.uint16).reshape(SHAPE) * 50
    path = tmp_path / "light.fits"
    fits.PrimaryHDU(physical).writeto(path)
    with open_light(path) as light:
        assert (light.shape, light.zero, light.dtype) == (SHAPE, 32768, np.dtype(">i2"))
        assert np.array_equal(light.read_rows(3, 9).astype(np.int64) + 32768, physical[3:9])
        assert np.array_equal(light.read_rows(30, 32).astype(np.int64) + 32768,
                              physical[30:32])
        with pytest.raises(ValueError, match="rows"):
            light.read_rows(5, 33)
        os.truncate(path, 2880 + 100)
        with pytest.raises(LibraryError, match="truncated"):
            light.read_rows(0, SHAPE[0])


def test_output_names() -> None:
    assert output_path_for(Path("/a/b/x.fits"), output_dir=None) == Path(
        "/a/b/x_calibrated.fits")
    assert output_path_for(Path("/a/b/x.FIT"), output_dir=Path("/o"), suffix="_c") == Path(
        "/o/x_c.fits")
    assert output_path_for(Path("/a/x.fits.fz"), output_dir=None) == Path("/a/x_calibrated.fits")
