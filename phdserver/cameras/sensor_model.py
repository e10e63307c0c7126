"""A deterministic model of a cooled astronomical sensor, for the simulator camera.

The simulator exists so that the dark-library and defect-map pipelines are exercised on frames
that behave like a real sensor's: a bias offset with a faint column pattern, read noise, dark
current that grows with exposure and doubles every few degrees, fixed-pattern hot pixels (a few
saturating), cold pixels, cosmic-ray hits that change from frame to frame, and, in light frames,
sky and a handful of stars that wander with the seeing. Everything random comes from the seed,
so a test knows the true hot and cold pixels a defect map must find.

The model is pure numpy: no trio, no I/O. :meth:`SensorModel.render` is meant to run in a
worker thread and is fast enough for that (one Gaussian draw and a few in-place passes over the
frame; the defects, stars and cosmic rays touch only their own pixels).

Binning follows a CCD's hardware (charge) binning: the charge of ``b×b`` pixels is summed before
it is read, so signals (dark current, sky, stars, hot pixels) scale by ``b²`` while the bias and
the read noise are added once per binned pixel. A bias level of 500 ADU therefore stays 500 at
any binning, which is what a dark library expects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from phdserver.cameras.base import FrameType, Subframe

__all__ = ["SensorConfig", "SensorModel"]

_FIXED_STREAM = 0
"""Seed-sequence key of the fixed pattern (defects, stars, column bias)."""
_FRAME_STREAM = 1
"""Seed-sequence key of the per-frame randomness (noise, cosmic rays, seeing)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SensorConfig:
    """The physical parameters of a simulated sensor; every random draw follows from ``seed``.

    Rates are in ADU at the default gain and at ``reference_temp_c``, per unbinned pixel.
    """

    width: int = 1280
    height: int = 960
    bits_per_pixel: int = 16
    seed: int = 0

    bias_adu: float = 500.0
    column_pattern_adu: float = 2.0
    """Half-range of the fixed per-column bias offset (uniform in ±this)."""
    read_noise_adu: float = 8.0
    gain_e_per_adu: float = 1.0
    """Electrons per ADU at the default gain; sets the shot noise of every signal."""
    default_gain: int = 50
    """The gain setting used when a capture gives none; signals scale by 1 at this gain."""
    gain_doubling: float = 25.0
    """Gain steps (0..100 scale) that double the signal."""

    dark_current_adu_per_s: float = 0.5
    reference_temp_c: float = 15.0
    doubling_temp_c: float = 6.0

    hot_pixel_fraction: float = 2e-4
    hot_factor_range: tuple[float, float] = (10.0, 1000.0)
    """Hot-pixel dark current as a multiple of the normal one, drawn log-uniformly."""
    saturating_hot_pixels: int = 5
    """Extra hot pixels so bright that they saturate within 1 s at the reference temperature."""

    cold_pixel_fraction: float = 5e-5
    cold_level_range: tuple[float, float] = (0.3, 0.7)
    """Output level of a cold pixel as a fraction of the bias."""
    dead_pixel_share: float = 0.2
    """Share of the cold pixels that read 0 whatever happens."""

    cosmic_rays_per_frame_per_mpix: float = 3.0
    cosmic_ray_adu_range: tuple[float, float] = (2000.0, 20000.0)
    cosmic_ray_max_length_px: int = 3

    star_count: int = 12
    star_flux_range_adu_per_s: tuple[float, float] = (2_000.0, 200_000.0)
    """Total flux of a star, drawn log-uniformly."""
    star_fwhm_px: float = 2.5
    seeing_jitter_px: float = 0.3
    """RMS per axis of the common star displacement from one frame to the next."""
    sky_adu_per_s: float = 10.0
    flat_adu_per_s: float = 20_000.0
    flat_vignetting: float = 0.2
    """Fractional fall-off of a flat field in the corners (along each axis)."""

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"sensor size must be positive, got {self.width}x{self.height}")
        if not 8 <= self.bits_per_pixel <= 16:
            raise ValueError(f"bits_per_pixel must be 8..16, got {self.bits_per_pixel}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.read_noise_adu < 0 or self.gain_e_per_adu <= 0 or self.doubling_temp_c <= 0:
            raise ValueError("read noise must be >= 0, gain and doubling temperature > 0")
        if not (0 <= self.hot_pixel_fraction + self.cold_pixel_fraction < 0.5):
            raise ValueError("hot and cold pixel fractions must be >= 0 and small")

    @property
    def saturation(self) -> int:
        return (1 << self.bits_per_pixel) - 1


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


class SensorModel:
    """A sensor's fixed pattern, computed once from the seed, and the frames it produces.

    Parameters
    ----------
    config : SensorConfig
        The sensor. Two models with equal configs render identical frames.

    Attributes
    ----------
    hot_pixels : ndarray of int64, shape (n, 2)
        ``x, y`` of every hot pixel (unbinned), saturating ones last.
    hot_rates_adu_per_s : ndarray of float64, shape (n,)
        Their total dark current at the reference temperature and default gain (the normal
        dark current included).
    cold_pixels : ndarray of int64, shape (m, 2)
        ``x, y`` of every cold pixel; none is also hot.
    cold_levels_adu : ndarray of float64, shape (m,)
        Their mean output level in ADU (0 for dead pixels), independent of exposure.
    star_positions : ndarray of float64, shape (k, 2)
        Mean ``x, y`` of each star's centre (unbinned pixels) before seeing jitter.
    star_fluxes_adu_per_s : ndarray of float64, shape (k,)
        Total flux of each star at the default gain.
    column_bias_adu : ndarray of float32, shape (width,)
        Bias of each column (``bias_adu`` plus the fixed column pattern).
    """

    def __init__(self, config: SensorConfig) -> None:
        self.config = config
        rng = np.random.default_rng([config.seed, _FIXED_STREAM])
        npix = config.width * config.height

        n_hot = round(config.hot_pixel_fraction * npix)
        n_sat = config.saturating_hot_pixels
        n_cold = round(config.cold_pixel_fraction * npix)
        flat = rng.choice(npix, size=n_hot + n_sat + n_cold, replace=False)
        xy = np.stack([flat % config.width, flat // config.width], axis=1).astype(np.int64)

        lo, hi = config.hot_factor_range
        factors = np.exp(rng.uniform(math.log(lo), math.log(hi), n_hot))
        # Saturating pixels reach full scale in 0.2-0.7 s at the reference temperature.
        headroom = config.saturation - config.bias_adu
        sat_rates = headroom * rng.uniform(1.5, 5.0, n_sat)
        rates = np.concatenate([factors * config.dark_current_adu_per_s, sat_rates])
        self.hot_pixels = _readonly(xy[: n_hot + n_sat])
        self.hot_rates_adu_per_s = _readonly(rates)

        self.cold_pixels = _readonly(xy[n_hot + n_sat :].copy())
        lo, hi = config.cold_level_range
        levels = config.bias_adu * rng.uniform(lo, hi, n_cold)
        levels[rng.random(n_cold) < config.dead_pixel_share] = 0.0
        self.cold_levels_adu = _readonly(levels)

        margin = min(16.0, config.width / 4, config.height / 4)
        self.star_positions = _readonly(
            np.stack(
                [
                    rng.uniform(margin, config.width - margin, config.star_count),
                    rng.uniform(margin, config.height - margin, config.star_count),
                ],
                axis=1,
            )
        )
        lo, hi = config.star_flux_range_adu_per_s
        self.star_fluxes_adu_per_s = _readonly(
            np.exp(rng.uniform(math.log(lo), math.log(hi), config.star_count))
        )

        pattern = rng.uniform(-config.column_pattern_adu, config.column_pattern_adu, config.width)
        self.column_bias_adu = _readonly((config.bias_adu + pattern).astype(np.float32))

    # ----------------------------------------------------------------------------- ground truth

    def dark_scale(self, temperature_c: float) -> float:
        """How much dark current grows from the reference temperature to ``temperature_c``."""
        cfg = self.config
        return float(2.0 ** ((temperature_c - cfg.reference_temp_c) / cfg.doubling_temp_c))

    def gain_scale(self, gain: int | None) -> float:
        """How much every signal grows from the default gain to ``gain``."""
        cfg = self.config
        if gain is None:
            return 1.0
        return float(2.0 ** ((gain - cfg.default_gain) / cfg.gain_doubling))

    def hot_excess_adu(
        self, exposure_s: float, temperature_c: float, gain: int | None = None
    ) -> np.ndarray:
        """Mean excess of each hot pixel over a normal pixel in one unbinned exposure, in ADU."""
        cfg = self.config
        excess = self.hot_rates_adu_per_s - cfg.dark_current_adu_per_s
        return excess * (exposure_s * self.dark_scale(temperature_c) * self.gain_scale(gain))

    def strong_hot_pixels(
        self,
        exposure_s: float,
        temperature_c: float,
        noise_floor_adu: float | None = None,
        *,
        gain: int | None = None,
    ) -> np.ndarray:
        """The hot pixels any sound defect map must find in such an exposure.

        Parameters
        ----------
        exposure_s, temperature_c : float
            The exposure the defect map is built from.
        noise_floor_adu : float, optional
            The excess a pixel must exceed; by default 20 × the read noise, far above any noise.
        gain : int, optional
            The gain setting; the default gain when omitted.

        Returns
        -------
        ndarray of int64, shape (n, 2)
            ``x, y`` of those hot pixels (unbinned).
        """
        if noise_floor_adu is None:
            noise_floor_adu = 20.0 * self.config.read_noise_adu
        keep = self.hot_excess_adu(exposure_s, temperature_c, gain) > noise_floor_adu
        return self.hot_pixels[keep]

    # ---------------------------------------------------------------------------------- frames

    def render(
        self,
        exposure_s: float,
        frame_type: FrameType,
        temperature_c: float,
        frame_index: int,
        binning: int = 1,
        subframe: Subframe | None = None,
        gain: int | None = None,
    ) -> np.ndarray:
        """Render one frame.

        Parameters
        ----------
        exposure_s : float
            Integration time. A ``BIAS`` frame ignores it and integrates for 0 s.
        frame_type : FrameType
            ``LIGHT`` adds sky and stars, ``FLAT`` a vignetted uniform illumination; ``DARK`` and
            ``BIAS`` see no light (the scope is covered or the shutter closed).
        temperature_c : float
            Sensor temperature; dark current doubles every ``doubling_temp_c``.
        frame_index : int
            Selects the frame's noise, cosmic rays and seeing; the same index and arguments give
            the same frame.
        binning : int
            Hardware binning: charge of ``binning×binning`` pixels summed before readout. The
            binned sensor is ``width // binning`` by ``height // binning``.
        subframe : Subframe, optional
            Region to return, in binned pixels; it equals the same crop of the full frame.
        gain : int, optional
            Gain setting; signals double every ``gain_doubling`` steps from ``default_gain``.

        Returns
        -------
        ndarray of uint16, shape (rows, cols)
            The frame, ``data[y, x]``, clipped to ``2**bits_per_pixel - 1``.
        """
        cfg = self.config
        if exposure_s < 0:
            raise ValueError(f"exposure must be >= 0 s, got {exposure_s}")
        if frame_index < 0:
            raise ValueError(f"frame_index must be >= 0, got {frame_index}")
        bw, bh = self._binned_size(binning)
        if subframe is not None and (
            subframe.x + subframe.width > bw or subframe.y + subframe.height > bh
        ):
            raise ValueError(f"{subframe!r} is outside the {bw}x{bh} binned sensor")

        rng = np.random.Generator(np.random.SFC64([cfg.seed, _FRAME_STREAM, frame_index]))
        t = 0.0 if frame_type is FrameType.BIAS else exposure_s
        area = binning * binning
        g = self.gain_scale(gain)
        dark = cfg.dark_current_adu_per_s * self.dark_scale(temperature_c) * t * area * g
        sky = cfg.sky_adu_per_s * t * area * g if frame_type is FrameType.LIGHT else 0.0
        # Shot-noise variance in ADU² of a signal S (ADU) is S·g_scale / gain_e_per_adu.
        variance = cfg.read_noise_adu**2 + (dark + sky) * g / cfg.gain_e_per_adu
        # +0.5 so that truncation in the final cast rounds to nearest.
        row = self._binned_columns(binning) + np.float32(dark + sky + 0.5)

        out = rng.standard_normal((bh, bw), dtype=np.float32)
        out *= np.float32(math.sqrt(variance))
        out += row

        if frame_type is FrameType.FLAT:
            self._add_flat(out, rng, t * area * g, g)
        if frame_type is FrameType.LIGHT:
            self._add_stars(out, rng, t, binning, g)
        self._add_hot_pixels(out, rng, t, temperature_c, binning, g)
        self._add_cosmic_rays(out, rng, binning, g)
        self._set_cold_pixels(out, rng, binning)

        if subframe is not None:
            out = out[
                subframe.y : subframe.y + subframe.height, subframe.x : subframe.x + subframe.width
            ]
        np.clip(out, 0.0, float(cfg.saturation), out=out)
        return out.astype(np.uint16)

    def _binned_size(self, binning: int) -> tuple[int, int]:
        if binning < 1:
            raise ValueError(f"binning must be >= 1, got {binning}")
        bw, bh = self.config.width // binning, self.config.height // binning
        if bw == 0 or bh == 0:
            raise ValueError(f"binning {binning} leaves no pixels")
        return bw, bh

    def _binned_columns(self, binning: int) -> np.ndarray:
        """Bias per binned column: the mean of the bias of the columns it collects."""
        bw = self.config.width // binning
        cols = self.column_bias_adu[: bw * binning]
        return cols.reshape(bw, binning).mean(axis=1, dtype=np.float32)

    def _bin_coords(
        self, xy: np.ndarray, binning: int, shape: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Binned ``(ys, xs, keep)`` of unbinned integer coordinates, dropping the remainder."""
        xs, ys = xy[:, 0] // binning, xy[:, 1] // binning
        keep = (xs < shape[1]) & (ys < shape[0])
        return ys[keep], xs[keep], keep

    def _add_hot_pixels(
        self,
        out: np.ndarray,
        rng: np.random.Generator,
        t: float,
        temperature_c: float,
        binning: int,
        g: float,
    ) -> None:
        cfg = self.config
        excess = self.hot_excess_adu(t, temperature_c) * g
        ys, xs, keep = self._bin_coords(self.hot_pixels, binning, out.shape)
        excess = excess[keep]
        noise = rng.standard_normal(excess.size) * np.sqrt(excess * g / cfg.gain_e_per_adu)
        np.add.at(out, (ys, xs), (excess + noise).astype(np.float32))

    def _set_cold_pixels(self, out: np.ndarray, rng: np.random.Generator, binning: int) -> None:
        """A binned pixel holding a cold pixel reads as that cold pixel (the defect dominates)."""
        ys, xs, keep = self._bin_coords(self.cold_pixels, binning, out.shape)
        levels = self.cold_levels_adu[keep]
        noise = rng.standard_normal(levels.size) * self.config.read_noise_adu
        # Dead pixels read exactly 0; the others keep a little read noise.
        out[ys, xs] = np.where(levels > 0, levels + noise, 0.0) + 0.5

    def _add_cosmic_rays(
        self, out: np.ndarray, rng: np.random.Generator, binning: int, g: float
    ) -> None:
        """Short tracks of 1..max_length pixels at random places, a fresh set every frame."""
        cfg = self.config
        mpix = cfg.width * cfg.height / 1e6
        count = int(rng.poisson(cfg.cosmic_rays_per_frame_per_mpix * mpix))
        if count == 0:
            return
        lengths = rng.integers(1, cfg.cosmic_ray_max_length_px + 1, count)
        starts = np.stack(
            [rng.integers(0, cfg.width, count), rng.integers(0, cfg.height, count)], axis=1
        )
        steps = np.array([(1, 0), (0, 1), (1, 1), (1, -1), (-1, 0), (0, -1), (-1, -1), (-1, 1)])
        direction = steps[rng.integers(0, len(steps), count)]
        track = np.concatenate(
            [starts[i] + np.arange(n)[:, None] * direction[i] for i, n in enumerate(lengths)]
        )
        inside = (
            (track[:, 0] >= 0)
            & (track[:, 0] < cfg.width)
            & (track[:, 1] >= 0)
            & (track[:, 1] < cfg.height)
        )
        track = track[inside]
        lo, hi = cfg.cosmic_ray_adu_range
        energy = rng.uniform(lo, hi, len(track)) * g
        ys, xs, keep = self._bin_coords(track, binning, out.shape)
        np.add.at(out, (ys, xs), energy[keep].astype(np.float32))

    def _add_stars(
        self, out: np.ndarray, rng: np.random.Generator, t: float, binning: int, g: float
    ) -> None:
        """Gaussian stars, all shifted by one seeing offset per frame, with their shot noise."""
        cfg = self.config
        jitter = rng.standard_normal(2) * cfg.seeing_jitter_px
        sigma = cfg.star_fwhm_px / (2.0 * math.sqrt(2.0 * math.log(2.0))) / binning
        radius = math.ceil(4.0 * sigma) + 1
        rows, cols = out.shape
        for (x0, y0), flux in zip(
            self.star_positions + jitter, self.star_fluxes_adu_per_s, strict=True
        ):
            cx, cy = (x0 + 0.5) / binning - 0.5, (y0 + 0.5) / binning - 0.5
            ix0, iy0 = max(round(cx) - radius, 0), max(round(cy) - radius, 0)
            ix1, iy1 = min(round(cx) + radius + 1, cols), min(round(cy) + radius + 1, rows)
            if ix0 >= ix1 or iy0 >= iy1:
                continue
            gx = np.exp(-0.5 * ((np.arange(ix0, ix1) - cx) / sigma) ** 2)
            gy = np.exp(-0.5 * ((np.arange(iy0, iy1) - cy) / sigma) ** 2)
            signal = np.outer(gy, gx) * (flux * t * g / (2.0 * math.pi * sigma * sigma))
            noise = rng.standard_normal(signal.shape) * np.sqrt(signal * g / cfg.gain_e_per_adu)
            out[iy0:iy1, ix0:ix1] += (signal + noise).astype(np.float32)

    def _add_flat(
        self, out: np.ndarray, rng: np.random.Generator, scaled_t: float, g: float
    ) -> None:
        """A smooth, separable vignetted illumination with its shot noise (flats only)."""
        cfg = self.config
        rows, cols = out.shape
        u = np.linspace(-1.0, 1.0, cols, dtype=np.float32)
        v = np.linspace(-1.0, 1.0, rows, dtype=np.float32)
        a = np.float32(cfg.flat_vignetting)
        level = np.float32(cfg.flat_adu_per_s * scaled_t)
        illumination = np.outer(1 - a * v * v, (1 - a * u * u) * level)
        noise = rng.standard_normal(out.shape, dtype=np.float32)
        noise *= np.sqrt(illumination * np.float32(g / cfg.gain_e_per_adu))
        out += illumination
        out += noise
