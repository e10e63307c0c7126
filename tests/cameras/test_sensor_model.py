"""The sensor model behind the simulator: deterministic, with the defects and physics it claims."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phdserver.cameras.base import FrameType, Subframe
from phdserver.cameras.sensor_model import SensorConfig, SensorModel

BIAS = 500.0
READ_NOISE = 8.0


@pytest.fixture(scope="module")
def model() -> SensorModel:
    return SensorModel(SensorConfig())


def clean(**changes: object) -> SensorModel:
    """A default model without defects or cosmic rays, for measuring the smooth parts."""
    base = dict(
        hot_pixel_fraction=0.0,
        saturating_hot_pixels=0,
        cold_pixel_fraction=0.0,
        cosmic_rays_per_frame_per_mpix=0.0,
    )
    base.update(changes)
    return SensorModel(dataclasses.replace(SensorConfig(), **base))  # type: ignore[arg-type]


def clipped_mean(frame: np.ndarray) -> float:
    """Mean of the pixels within 5 sigma of the median (ignores defects, rays and stars)."""
    data = frame.astype(np.float64)
    med = np.median(data)
    sigma = 1.4826 * np.median(np.abs(data - med))
    return float(data[np.abs(data - med) < 5 * sigma].mean())


def values_at(frame: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return frame[xy[:, 1], xy[:, 0]].astype(np.float64)


# ----------------------------------------------------------------------------------- determinism


def test_same_seed_and_index_give_the_same_frame(model: SensorModel) -> None:
    other = SensorModel(SensorConfig())
    for frame_type in FrameType:
        a = model.render(2.0, frame_type, 15.0, 7)
        b = other.render(2.0, frame_type, 15.0, 7)
        assert a.dtype == np.uint16
        assert a.shape == (960, 1280)
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(other.hot_pixels, model.hot_pixels)
    np.testing.assert_array_equal(other.cold_pixels, model.cold_pixels)


def test_different_seeds_differ(model: SensorModel) -> None:
    other = SensorModel(SensorConfig(seed=1))
    assert not np.array_equal(other.hot_pixels, model.hot_pixels)
    assert not np.array_equal(other.star_positions, model.star_positions)
    assert not np.array_equal(
        other.render(1.0, FrameType.DARK, 15.0, 0), model.render(1.0, FrameType.DARK, 15.0, 0)
    )


def test_frames_differ_but_share_the_fixed_pattern(model: SensorModel) -> None:
    a = model.render(10.0, FrameType.DARK, 15.0, 0)
    b = model.render(10.0, FrameType.DARK, 15.0, 1)
    assert not np.array_equal(a, b)
    strong = model.strong_hot_pixels(10.0, 15.0)
    assert np.all(values_at(a, strong) > BIAS + 100)
    assert np.all(values_at(b, strong) > BIAS + 100)


def test_ground_truth_is_read_only(model: SensorModel) -> None:
    with pytest.raises(ValueError, match="read-only"):
        model.hot_pixels[0, 0] = 3


# ---------------------------------------------------------------------------------- defects


def test_defect_counts_and_placement(model: SensorModel) -> None:
    npix = 1280 * 960
    assert len(model.hot_pixels) == round(2e-4 * npix) + 5
    assert len(model.hot_rates_adu_per_s) == len(model.hot_pixels)
    assert len(model.cold_pixels) == round(5e-5 * npix)
    for xy in (model.hot_pixels, model.cold_pixels):
        assert np.all((xy[:, 0] >= 0) & (xy[:, 0] < 1280) & (xy[:, 1] >= 0) & (xy[:, 1] < 960))
    hot = {tuple(p) for p in model.hot_pixels}
    cold = {tuple(p) for p in model.cold_pixels}
    assert len(hot) == len(model.hot_pixels)
    assert not hot & cold
    normal = model.hot_rates_adu_per_s[:-5] / 0.5
    assert normal.min() >= 10
    assert normal.max() <= 1000


def test_hot_pixels_stand_out_in_a_10s_dark(model: SensorModel) -> None:
    frame = model.render(10.0, FrameType.DARK, 15.0, 3)
    background = clipped_mean(frame)
    assert background == pytest.approx(BIAS + 5.0, abs=0.5)
    excess = values_at(frame, model.hot_pixels) - background
    expected = np.minimum(model.hot_excess_adu(10.0, 15.0), 65535 - background)
    sigma = np.sqrt(READ_NOISE**2 + 5.0 + expected)
    # Every hot pixel is where the model says, at the level it says (a cosmic ray may add).
    assert np.all(excess > expected - 6 * sigma - 3)
    assert np.all(excess > 4 * READ_NOISE)
    strong = model.strong_hot_pixels(10.0, 15.0)
    assert len(strong) > len(model.hot_pixels) // 2
    assert np.all(values_at(frame, strong) - background > 15 * READ_NOISE)


def test_saturating_hot_pixels_clip_at_full_scale(model: SensorModel) -> None:
    frame = model.render(1.0, FrameType.DARK, 15.0, 0)
    assert np.all(values_at(frame, model.hot_pixels[-5:]) == 65535)
    assert frame.max() == 65535


def test_saturation_follows_the_bit_depth() -> None:
    model = SensorModel(SensorConfig(width=200, height=100, bits_per_pixel=12, bias_adu=100.0))
    frame = model.render(5.0, FrameType.DARK, 15.0, 0)
    assert frame.max() == 4095
    assert np.all(values_at(frame, model.hot_pixels[-5:]) == 4095)


def test_cold_pixels_read_low(model: SensorModel) -> None:
    frame = model.render(10.0, FrameType.DARK, 15.0, 0)
    values = values_at(frame, model.cold_pixels)
    assert np.all(values < 0.7 * BIAS + 6 * READ_NOISE)
    dead = model.cold_levels_adu == 0
    assert dead.any()
    assert np.all(values[dead] == 0)
    assert np.all(np.abs(values[~dead] - model.cold_levels_adu[~dead]) < 6 * READ_NOISE)


def test_strong_hot_pixels_grow_with_exposure_and_temperature(model: SensorModel) -> None:
    short = model.strong_hot_pixels(1.0, 15.0)
    long = model.strong_hot_pixels(15.0, 15.0)
    warm = model.strong_hot_pixels(1.0, 27.0)
    assert len(short) < len(long) <= len(model.hot_pixels)
    assert len(short) < len(warm)
    assert len(model.strong_hot_pixels(15.0, 15.0, noise_floor_adu=1e9)) == 0


# ----------------------------------------------------------------------------------- physics


def test_bias_frames_have_read_noise_and_no_dark_current() -> None:
    model = clean()
    frame = model.render(100.0, FrameType.BIAS, 40.0, 0)
    np.testing.assert_array_equal(frame, model.render(0.0, FrameType.BIAS, 15.0, 0))
    assert clipped_mean(frame) == pytest.approx(BIAS, abs=0.3)
    assert frame.astype(np.float64).std() == pytest.approx(READ_NOISE, rel=0.05)


def test_dark_current_doubles_every_6_degrees() -> None:
    model = clean()
    bias = clipped_mean(model.render(0.0, FrameType.BIAS, 15.0, 0))
    signal = {
        t: clipped_mean(model.render(60.0, FrameType.DARK, t, i)) - bias
        for i, t in enumerate((9.0, 15.0, 21.0))
    }
    assert signal[15.0] == pytest.approx(30.0, rel=0.05)
    assert signal[21.0] / signal[15.0] == pytest.approx(2.0, rel=0.05)
    assert signal[15.0] / signal[9.0] == pytest.approx(2.0, rel=0.05)


def test_gain_scales_the_signal() -> None:
    model = clean()
    at_default = clipped_mean(model.render(60.0, FrameType.DARK, 15.0, 0, gain=50)) - BIAS
    at_75 = clipped_mean(model.render(60.0, FrameType.DARK, 15.0, 0, gain=75)) - BIAS
    assert at_75 / at_default == pytest.approx(2.0, rel=0.1)


def test_cosmic_rays_change_from_frame_to_frame() -> None:
    model = clean(cosmic_rays_per_frame_per_mpix=20.0)
    hits = []
    for index in range(4):
        frame = model.render(0.0, FrameType.BIAS, 15.0, index)
        ys, xs = np.nonzero(frame > BIAS + 1000)
        hits.append(set(zip(xs.tolist(), ys.tolist(), strict=True)))
    assert all(len(h) >= 5 for h in hits)
    assert all(not hits[0] & h for h in hits[1:])


def test_light_frames_show_stars_and_darks_do_not() -> None:
    model = clean()
    light = model.render(1.0, FrameType.LIGHT, 15.0, 0).astype(np.float64)
    dark = model.render(1.0, FrameType.DARK, 15.0, 0).astype(np.float64)
    assert clipped_mean(light) - clipped_mean(dark) == pytest.approx(10.0, abs=0.5)  # sky
    for x, y in np.rint(model.star_positions).astype(int):
        assert light[y - 2 : y + 3, x - 2 : x + 3].max() > clipped_mean(light) + 100
        assert dark[y - 2 : y + 3, x - 2 : x + 3].max() < BIAS + 6 * READ_NOISE


def test_stars_jitter_with_the_seeing() -> None:
    model = clean()
    brightest = int(np.argmax(model.star_fluxes_adu_per_s))
    x0, y0 = model.star_positions[brightest]
    cx, cy = round(x0), round(y0)
    centroids = []
    for index in range(30):
        frame = model.render(0.1, FrameType.LIGHT, 15.0, index).astype(np.float64)
        patch = frame[cy - 6 : cy + 7, cx - 6 : cx + 7] - np.median(frame)
        patch[patch < 3 * READ_NOISE] = 0
        ys, xs = np.mgrid[cy - 6 : cy + 7, cx - 6 : cx + 7]
        centroids.append(((patch * xs).sum() / patch.sum(), (patch * ys).sum() / patch.sum()))
    c = np.array(centroids)
    assert np.allclose(c.mean(axis=0), (x0, y0), atol=0.2)
    assert 0.15 < c[:, 0].std() < 0.5
    assert 0.15 < c[:, 1].std() < 0.5


def test_flat_frames_are_vignetted() -> None:
    model = clean()
    flat = model.render(1.0, FrameType.FLAT, 15.0, 0).astype(np.float64)
    centre = np.median(flat[430:530, 590:690])
    corner = np.median(flat[:50, :50])
    assert centre == pytest.approx(BIAS + 20_000, rel=0.01)
    assert corner < centre - 0.3 * 20_000


# ----------------------------------------------------------------------- binning and subframes


def test_binning_sums_charge_and_keeps_the_bias() -> None:
    model = clean()
    for binning, shape in ((1, (960, 1280)), (2, (480, 640)), (3, (320, 426)), (4, (240, 320))):
        frame = model.render(60.0, FrameType.DARK, 15.0, 0, binning=binning)
        assert frame.shape == shape
        assert clipped_mean(frame) - BIAS == pytest.approx(30.0 * binning**2, rel=0.05)
    bias2 = model.render(0.0, FrameType.BIAS, 15.0, 0, binning=2).astype(np.float64)
    assert bias2.std() == pytest.approx(READ_NOISE, rel=0.05)


def test_binned_defects_land_in_their_bins(model: SensorModel) -> None:
    frame = model.render(1.0, FrameType.DARK, 15.0, 0, binning=2)
    assert np.all(values_at(frame, model.hot_pixels[-5:] // 2) == 65535)


def test_subframe_is_a_crop_of_the_full_frame(model: SensorModel) -> None:
    roi = Subframe(x=100, y=50, width=200, height=120)
    full = model.render(3.0, FrameType.LIGHT, 15.0, 4, binning=2)
    crop = model.render(3.0, FrameType.LIGHT, 15.0, 4, binning=2, subframe=roi)
    assert crop.shape == (120, 200)
    assert crop.flags.c_contiguous
    np.testing.assert_array_equal(crop, full[50:170, 100:300])


@settings(max_examples=40, deadline=None)
@given(
    binning=st.integers(1, 4),
    x=st.integers(0, 80),
    y=st.integers(0, 60),
    width=st.integers(1, 80),
    height=st.integers(1, 60),
)
def test_any_subframe_inside_the_binned_sensor_works(
    binning: int, x: int, y: int, width: int, height: int
) -> None:
    model = SensorModel(SensorConfig(width=80, height=60, star_count=2))
    roi = Subframe(x=x, y=y, width=width, height=height)
    inside = x + width <= 80 // binning and y + height <= 60 // binning
    if not inside:
        with pytest.raises(ValueError, match="outside"):
            model.render(1.0, FrameType.LIGHT, 15.0, 0, binning=binning, subframe=roi)
        return
    full = model.render(1.0, FrameType.LIGHT, 15.0, 0, binning=binning)
    crop = model.render(1.0, FrameType.LIGHT, 15.0, 0, binning=binning, subframe=roi)
    np.testing.assert_array_equal(crop, full[y : y + height, x : x + width])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"binning": 0}, "binning"),
        ({"exposure_s": -1.0}, "exposure"),
        ({"frame_index": -1}, "frame_index"),
    ],
)
def test_render_rejects_bad_arguments(
    model: SensorModel, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = dict(
        exposure_s=1.0, frame_type=FrameType.DARK, temperature_c=15.0, frame_index=0
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        model.render(**args)  # type: ignore[arg-type]


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="seed"):
        SensorConfig(seed=-1)
    with pytest.raises(ValueError, match="bits_per_pixel"):
        SensorConfig(bits_per_pixel=32)
