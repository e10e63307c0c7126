"""Light-frame calibration arithmetic: bias, dark (scaled or not) and flat, in float32.

The formula (SPEC §6.2) is ``out = (light - bias - (dark - bias)·t_light/t_dark) / flat_norm``
with ``flat_norm = flat / median(flat)``. Everything that involves only masters is folded, once
per master set, into two frames (reference/calibration.md §2b):

* ``offset = bias + (dark - bias)·s`` (``s = t_light/t_dark``), what is subtracted;
* ``gain = median(flat) / flat``, what the difference is multiplied by.

so a light costs one subtract-and-convert and one multiply (:func:`calibrate`; 31 ms instead of
66 ms for 4096² in calibration.md's measurement), or, for a light as a FITS file stores it
(big-endian 16-bit with ``BZERO``), a single numba pass that also does the byte swaps
(:func:`calibrate_fits16`, about 10 ms). No I/O and no trio here; the FITS side lives in
``phdserver.pipeline.calibration_io``.

**Bias in darks.** A master dark includes the bias unless the caller says otherwise
(``dark_includes_bias=False``, from the dark's header). With a dark of the light's own exposure
that contains the bias, ``offset = dark`` and no bias is needed (``L - B - (D - B) = L - D``); a
bias-free dark always needs a bias.

**Flat pixels that cannot divide.** The flat's median is taken over its finite, positive pixels
only. A pixel of the flat that is not finite, or is zero or negative, has no meaningful gain:
its output is **NaN** (the FITS convention for an undefined value) and the number of such pixels
is reported as :attr:`MasterTerms.bad_flat_pixels`, never silently replaced by 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numba
import numpy as np

__all__ = [
    "MasterTerms",
    "QualityFigures",
    "QualitySampler",
    "calibrate",
    "calibrate_fits16",
    "quality_figures",
    "warm_up",
]

_MAD_TO_SIGMA = 1.482602218505602
"""1 / Φ⁻¹(3/4): turns a Gaussian's median absolute deviation into its standard deviation."""
_QUALITY_SAMPLES = 1 << 16
"""About this many pixels, on a regular grid, are used for the quality figures."""


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class MasterTerms:
    """The master-only parts of the calibration, precomputed for one master set and exposure.

    Build with :meth:`from_masters`; arrays are read-only float32 of the light's shape.
    """

    shape: tuple[int, int]
    offset: np.ndarray | None
    """Subtracted from the light (``bias + (dark - bias)·s``); None when there is nothing."""
    gain: np.ndarray | None
    """Multiplies the difference (``median(flat) / flat``, NaN at unusable flat pixels)."""
    dark_scale: float | None
    """``t_light / t_dark`` applied to the dark's thermal signal; None without a dark."""
    bias_applied: bool
    """False when no bias was given or when the dark's own bias made it unnecessary."""
    flat_median: float | None
    bad_flat_pixels: int
    """Flat pixels that were not finite or not positive; their output pixels are NaN."""
    steps: tuple[str, ...]
    """One sentence per step, for ``HISTORY`` cards."""

    def rows(self, start: int, stop: int) -> MasterTerms:
        """The terms of rows ``start:stop`` only (views, no copy), to calibrate a frame band by
        band: a band of ~1 MiB stays in the CPU cache between the kernel and the ``write``,
        where a whole 4096² frame streams 96 MiB more through memory per light."""
        if not 0 <= start < stop <= self.shape[0]:
            raise ValueError(f"rows {start}:{stop} are not within 0:{self.shape[0]}")
        return replace(
            self,
            shape=(stop - start, self.shape[1]),
            offset=None if self.offset is None else self.offset[start:stop],
            gain=None if self.gain is None else self.gain[start:stop],
        )

    @classmethod
    def from_masters(
        cls,
        *,
        bias: np.ndarray | None = None,
        dark: np.ndarray | None = None,
        flat: np.ndarray | None = None,
        light_exposure_s: float | None = None,
        dark_exposure_s: float | None = None,
        dark_includes_bias: bool = True,
    ) -> MasterTerms:
        """Precompute the offset and flat gain for lights of ``light_exposure_s``.

        Parameters
        ----------
        bias, dark, flat : numpy.ndarray, optional
            2-D master frames of one shape, any numeric dtype. The flat is taken as already
            calibrated (bias and dark-flat removed); only its median normalises it.
        light_exposure_s, dark_exposure_s : float, optional
            Both are needed with a dark; the dark's thermal signal is scaled by their ratio.
        dark_includes_bias : bool
            Whether the master dark still contains the bias (the usual case).

        Returns
        -------
        MasterTerms

        Raises
        ------
        ValueError
            Shapes differ, a dark has no exposures or a non-positive one, a bias-free dark or a
            scaled dark comes without a bias, or the flat has no finite positive pixel.
        """
        arrays = {"bias": bias, "dark": dark, "flat": flat}
        shape = _common_shape(arrays)
        steps: list[str] = []
        offset: np.ndarray | None = None
        scale: float | None = None
        bias_applied = False
        if dark is not None:
            scale = _dark_scale(light_exposure_s, dark_exposure_s)
            exact = math.isclose(scale, 1.0, rel_tol=1e-9)
            if bias is None and (not exact or not dark_includes_bias):
                why = "a scaled dark" if not exact else "a dark without bias"
                raise ValueError(f"{why} needs a bias master")
            if exact and dark_includes_bias:
                offset = np.array(dark, dtype=np.float32)
                steps.append("dark subtracted (same exposure; it includes the bias)")
            else:
                thermal = np.asarray(dark, dtype=np.float64)
                if dark_includes_bias:
                    thermal = thermal - bias
                offset = (np.asarray(bias, dtype=np.float64) + thermal * scale).astype(np.float32)
                bias_applied = True
                steps.append("bias subtracted")
                steps.append(
                    f"dark thermal signal subtracted, scaled by {scale:.6g}"
                    f" ({light_exposure_s:g} s / {dark_exposure_s:g} s)"
                    if not exact
                    else "dark subtracted (same exposure; bias-free dark)"
                )
        elif bias is not None:
            offset = np.array(bias, dtype=np.float32)
            bias_applied = True
            steps.append("bias subtracted (no dark)")
        gain: np.ndarray | None = None
        flat_median: float | None = None
        bad = 0
        if flat is not None:
            gain, flat_median, bad = _flat_gain(flat)
            steps.append(
                f"divided by the flat normalised by its median {flat_median:.6g}"
                + (f"; {bad} unusable flat pixels set to NaN" if bad else "")
            )
        for array in (offset, gain):
            if array is not None:
                array.flags.writeable = False
        return cls(
            shape=shape,
            offset=offset,
            gain=gain,
            dark_scale=scale,
            bias_applied=bias_applied,
            flat_median=flat_median,
            bad_flat_pixels=bad,
            steps=tuple(steps),
        )


def calibrate(light: np.ndarray, terms: MasterTerms, out: np.ndarray | None = None) -> np.ndarray:
    """Calibrate one light: ``(light - terms.offset) * terms.gain`` in float32.

    Parameters
    ----------
    light : numpy.ndarray
        2-D frame of ``terms.shape``, any numeric dtype or byte order (e.g. a FITS file's
        big-endian ``>i2`` stored values, with :meth:`MasterTerms.with_input_zero`). Not
        modified.
    terms : MasterTerms
    out : numpy.ndarray, optional
        float32 array of the same shape to write into, native or big-endian (``>f4``, ready to
        be written to a FITS file without a byte-swapped copy). Must not overlap ``light``.

    Returns
    -------
    numpy.ndarray
        ``out``, or a new native float32 array.

    Notes
    -----
    Two passes at most: the subtraction converts to float32 as it goes, and the multiply
    writes the result in ``out``'s byte order. A big-endian ``out`` needs a native scratch
    frame for the first pass.
    """
    if light.shape != terms.shape:
        raise ValueError(f"light shape {light.shape} does not match the masters {terms.shape}")
    if out is None:
        out = np.empty(terms.shape, np.float32)
    elif out.shape != terms.shape or out.dtype.kind != "f" or out.dtype.itemsize != 4:
        raise ValueError(f"out must be float32 of shape {terms.shape}, got {out.dtype} {out.shape}")
    native = out.dtype.isnative
    if terms.offset is not None and terms.gain is not None:
        scratch = out if native else np.empty(terms.shape, np.float32)
        np.subtract(light, terms.offset, out=scratch, dtype=np.float32)
        np.multiply(scratch, terms.gain, out=out)
    elif terms.offset is not None:
        np.subtract(light, terms.offset, out=out, dtype=np.float32)
    elif terms.gain is not None:
        np.multiply(light, terms.gain, out=out, dtype=np.float32)
    else:
        np.copyto(out, light, casting="unsafe")
    return out


def calibrate_fits16(
    stored: np.ndarray, terms: MasterTerms, *, bzero: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Calibrate a light given as a FITS file stores it (BITPIX 16), into big-endian float32.

    Parameters
    ----------
    stored : numpy.ndarray
        2-D big-endian signed 16-bit values (``>i2``), straight from the file's data unit.
    terms : MasterTerms
    bzero : {0, 32768}
        The file's ``BZERO``: 32768 for the usual unsigned 16-bit camera data.
    out : numpy.ndarray, optional
        C-contiguous big-endian float32 (``>f4``) array to fill; a new one by default.

    Returns
    -------
    numpy.ndarray
        ``out``: exactly what :func:`calibrate` gives for the physical values, byte-swapped for
        FITS, so it can be written to a file as it is.

    Notes
    -----
    One pass in numba (GIL released): each pixel is byte-swapped, converted to its physical
    value exactly (``BZERO`` applied in integers), calibrated in float32 and stored
    byte-swapped. The numpy equivalent needs four passes (un-``BZERO``, subtract, multiply,
    swap) and costs 2.5-3.5× more here (25-36 ms against 10 ms for 4096²), which matters when
    the whole calibration must stay within 1.3× of copying the file.
    """
    if stored.dtype != np.dtype(">i2") or stored.shape != terms.shape:
        raise ValueError(f"stored must be >i2 of shape {terms.shape}, got {stored.dtype} "
                         f"{stored.shape}")
    if bzero not in (0, 32768):
        raise ValueError(f"bzero must be 0 or 32768, got {bzero}")
    if out is None:
        out = np.empty(terms.shape, ">f4")
    elif out.dtype != np.dtype(">f4") or out.shape != terms.shape or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous >f4 of shape {terms.shape}")
    empty = np.zeros(1, np.float32)
    offset = empty if terms.offset is None else terms.offset
    gain = empty if terms.gain is None else terms.gain
    _fused16(
        np.ascontiguousarray(stored).reshape(-1).view(np.uint16),
        bzero == 32768,
        offset.reshape(-1),
        terms.offset is not None,
        gain.reshape(-1),
        terms.gain is not None,
        out.reshape(-1).view(np.uint32),
    )
    return out


@numba.njit(cache=True, nogil=True)
def _fused16(
    raw: np.ndarray,
    unsigned: bool,
    offset: np.ndarray,
    has_offset: bool,
    gain: np.ndarray,
    has_gain: bool,
    out_bits: np.ndarray,
) -> None:  # pragma: no cover - compiled
    sign_flip = np.uint32(0x8000)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    for i in range(raw.size):
        x = np.uint32(raw[i])
        bits = ((x & np.uint32(0xFF)) << np.uint32(8)) | (x >> np.uint32(8))
        # unsigned: the physical value is stored + 32768, i.e. the sign bit flipped;
        # signed: two's complement int16.
        physical = (np.int64(bits ^ sign_flip) if unsigned
                    else np.int64(bits) - np.int64(65536) * np.int64(bits >= sign_flip))
        subtract = offset[i] if has_offset else zero
        multiply = gain[i] if has_gain else one
        result = np.float32((np.float32(physical) - subtract) * multiply)
        y = result.view(np.uint32)
        out_bits[i] = (((y & np.uint32(0xFF)) << np.uint32(24))
                       | ((y & np.uint32(0xFF00)) << np.uint32(8))
                       | ((y >> np.uint32(8)) & np.uint32(0xFF00))
                       | (y >> np.uint32(24)))


def warm_up() -> None:
    """Compile, or load from numba's cache, the fused kernel (about 0.2-0.8 s, GIL held)."""
    terms = MasterTerms.from_masters(bias=np.zeros((1, 2), np.float32),
                                     flat=np.ones((1, 2), np.float32))
    calibrate_fits16(np.zeros((1, 2), ">i2"), terms, bzero=32768)


@dataclass(frozen=True, slots=True, kw_only=True)
class QualityFigures:
    """Figures that show at a glance whether a calibrated frame is sane."""

    median: float
    noise: float
    """1.4826 × the median absolute deviation: the spread of the sky, robust to stars."""
    negative_fraction: float
    """Share of finite pixels below zero: large when the dark or bias was too strong."""
    nan_fraction: float
    """Share of pixels that are NaN (unusable flat pixels, NaN in the light)."""
    samples: int
    """Pixels the figures were computed from."""

    def to_json(self) -> dict[str, float | int]:
        return {
            "median": self.median,
            "noise": self.noise,
            "negative_fraction": self.negative_fraction,
            "nan_fraction": self.nan_fraction,
            "samples": self.samples,
        }


class QualitySampler:
    """Collects the pixels :func:`quality_figures` uses, band by band, for a frame of ``shape``.

    The figures come from a regular grid of about 2^16 pixels (every k-th pixel of every k-th
    row), not the whole frame: a full median of a 4096² frame costs ~130 ms, more than the rest
    of the calibration, while 65536 samples give the median to 0.5 % of the noise (its standard
    error is 1.25 σ/√n) in about 1 ms. The grid depends only on the frame's shape, so a frame
    calibrated in bands (:meth:`add` per band, in any order) gives the same figures as the whole
    frame at once.
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        self._shape = shape
        self._step = max(1, math.ceil(math.sqrt(shape[0] * shape[1] / _QUALITY_SAMPLES)))
        self._samples: list[np.ndarray] = []
        self._figures: QualityFigures | None = None

    def add(self, first_row: int, band: np.ndarray) -> None:
        """Take the grid's pixels from ``band``, rows ``first_row:first_row + len(band)``."""
        self._figures = None
        skip = -first_row % self._step
        self._samples.append(np.asarray(band[skip::self._step, ::self._step],
                                        dtype=np.float32).ravel())

    def figures(self) -> QualityFigures:
        """The figures of what was added; all NaN (``nan_fraction`` 1) before any band."""
        if self._figures is None:
            self._figures = self._compute()
        return self._figures

    def _compute(self) -> QualityFigures:
        sample = np.concatenate(self._samples) if self._samples else np.empty(0, np.float32)
        finite = sample[np.isfinite(sample)]
        total = sample.size
        if finite.size == 0:
            nan = float("nan")
            return QualityFigures(
                median=nan, noise=nan, negative_fraction=nan, nan_fraction=1.0, samples=total
            )
        median = float(np.median(finite))
        mad = float(np.median(np.abs(finite - np.float32(median))))
        return QualityFigures(
            median=median,
            noise=_MAD_TO_SIGMA * mad,
            negative_fraction=float(np.count_nonzero(finite < 0)) / finite.size,
            nan_fraction=float(total - finite.size) / total,
            samples=total,
        )


def quality_figures(image: np.ndarray) -> QualityFigures:
    """Median, robust noise (MAD) and the fraction of negative pixels of a calibrated frame.

    Parameters
    ----------
    image : numpy.ndarray
        2-D float image, any byte order.

    Returns
    -------
    QualityFigures
        From a grid of about 2^16 pixels (see :class:`QualitySampler`); non-finite pixels are
        left out and counted.
    """
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got {image.ndim} dimensions")
    sampler = QualitySampler((image.shape[0], image.shape[1]))
    sampler.add(0, image)
    return sampler.figures()


def _common_shape(arrays: dict[str, np.ndarray | None]) -> tuple[int, int]:
    shapes = {name: a.shape for name, a in arrays.items() if a is not None}
    if not shapes:
        raise ValueError("at least one master (bias, dark or flat) is needed")
    for name, shape in shapes.items():
        if len(shape) != 2 or 0 in shape:
            raise ValueError(f"the {name} must be a non-empty 2-D array, got shape {shape}")
    if len(set(shapes.values())) != 1:
        detail = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"masters differ in shape: {detail}")
    first = next(iter(shapes.values()))
    return int(first[0]), int(first[1])


def _dark_scale(light_exposure_s: float | None, dark_exposure_s: float | None) -> float:
    if light_exposure_s is None or dark_exposure_s is None:
        raise ValueError("a dark needs both the light's and the dark's exposure")
    if not (math.isfinite(dark_exposure_s) and dark_exposure_s > 0):
        raise ValueError(f"dark exposure must be positive, got {dark_exposure_s}")
    if not (math.isfinite(light_exposure_s) and light_exposure_s >= 0):
        raise ValueError(f"light exposure must be >= 0, got {light_exposure_s}")
    return light_exposure_s / dark_exposure_s


def _flat_gain(flat: np.ndarray) -> tuple[np.ndarray, float, int]:
    """``(median / flat with NaN at unusable pixels, median, count of unusable pixels)``."""
    values = np.asarray(flat, dtype=np.float32)
    usable = np.isfinite(values) & (values > 0)
    bad = int(values.size - np.count_nonzero(usable))
    if bad == values.size:
        raise ValueError("the flat has no finite positive pixel")
    median = float(np.median(values[usable])) if bad else float(np.median(values))
    gain = np.full(values.shape, np.nan, np.float32)
    np.divide(np.float32(median), values, out=gain, where=usable)
    return gain, median, bad
