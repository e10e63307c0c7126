"""PHD2's defect (bad-pixel) map: statistics, selection and correction, in numpy.

A defect map is built from a master dark and its 31×31 median-filtered version
(:func:`phdserver.imaging.median_filter.phd2_median_filter`): a pixel is hot or cold when it
departs from its local background by more than a threshold proportional to the master's standard
deviation (reference/phd2.md §3). Selection needs only the two saved images, so re-selecting with
new aggressiveness values (PHD2's refine dialog, our ``refine_defect_map``) is just another call
to :func:`build_defect_map`; it never re-runs the filter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np

__all__ = [
    "DefectMapResult",
    "ImageStats",
    "aggressiveness_to_sigma",
    "build_defect_map",
    "image_stats",
    "remove_defects",
    "upper_median",
]

_VALUES = 65536
_CHUNK_PIXELS = 1 << 20  # bincount casts its input to intp; count in chunks to bound that copy


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageStats:
    """Whole-frame statistics of a ``uint16`` image, as PHD2 computes them for a master dark.

    ``stdev`` is the *population* standard deviation; ``median`` and ``mad`` are the element of
    0-based rank ``N // 2`` (the upper median), and ``mad`` has no 1.4826 factor.
    """

    mean: float
    stdev: float
    median: int
    mad: int


def _check_uint16_2d(name: str, image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint16:
        got = (
            f"{image.dtype} array of shape {image.shape}"
            if isinstance(image, np.ndarray)
            else type(image).__name__
        )
        raise ValueError(f"{name} must be a 2-D uint16 image, got a {got}")
    if image.size == 0:
        raise ValueError(f"{name} is empty (shape {image.shape})")


def _value_histogram(image: np.ndarray) -> np.ndarray:
    """Count of each uint16 value, in int64, without a full-size intp copy of the image."""
    flat = image.reshape(-1)
    counts = np.zeros(_VALUES, np.int64)
    for start in range(0, flat.size, _CHUNK_PIXELS):
        counts += np.bincount(flat[start : start + _CHUNK_PIXELS], minlength=_VALUES)
    return counts


def _rank_value(counts: np.ndarray, rank: int) -> int:
    """The value of 0-based ``rank`` in the sorted data described by ``counts``."""
    return int(np.searchsorted(np.cumsum(counts), rank, side="right"))


def upper_median(image: np.ndarray) -> int:
    """Element of 0-based rank ``N // 2`` of the sorted pixels (the upper median for even N).

    Parameters
    ----------
    image : numpy.ndarray
        2-D ``uint16`` image.

    Returns
    -------
    int
        The median value, exact (computed from a value histogram, not by sorting).
    """
    _check_uint16_2d("image", image)
    return _rank_value(_value_histogram(image), image.size // 2)


def image_stats(image: np.ndarray) -> ImageStats:
    """Whole-frame mean, population stdev, upper median and MAD of a ``uint16`` image.

    Parameters
    ----------
    image : numpy.ndarray
        2-D ``uint16`` image, typically a master dark.

    Returns
    -------
    ImageStats
        ``mean`` and ``stdev`` as floats, ``median`` and ``mad`` as ints.

    Notes
    -----
    Everything derives from the 65536-bin value histogram: the sums are exact Python integers,
    so ``stdev = sqrt((N·Σx² - (Σx)²) / N²)`` has no cancellation error, and the median of
    ``|x - median|`` reads off a histogram of distances. PHD2 (``GetImageStats``) uses a Welford
    running mean/variance and ``nth_element``; the definitions are the same.
    """
    _check_uint16_2d("image", image)
    counts = _value_histogram(image)
    n = int(image.size)
    values = np.arange(_VALUES, dtype=np.int64)
    s1 = int(np.dot(counts, values))
    s2 = int(np.dot(counts, values * values))
    mean = s1 / n
    stdev = math.sqrt((n * s2 - s1 * s1) / (n * n))
    median = _rank_value(counts, n // 2)
    # distances[d] = number of pixels with |x - median| == d
    distances = np.zeros(_VALUES, np.int64)
    above = counts[median:]
    distances[: above.size] += above
    below = counts[:median][::-1]
    distances[1 : below.size + 1] += below
    mad = _rank_value(distances, n // 2)
    return ImageStats(mean=mean, stdev=stdev, median=median, mad=mad)


def aggressiveness_to_sigma(aggressiveness: float) -> float:
    """PHD2's threshold in units of stdev: ``2 ** (3 - 0.06 · a)``, with ``a`` clamped to 0..100.

    0 gives 8σ (few defects), 50 gives 1σ, 75 (the UI default) 0.354σ, 100 gives 0.125σ.
    """
    a = min(max(aggressiveness, 0), 100)
    return float(2.0 ** (3.0 - 0.06 * a))


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class DefectMapResult:
    """A selected defect map and the numbers that went into it (the map file's header).

    ``cold`` and ``hot`` are ``(k, 2)`` int64 arrays of ``(x, y)``, 0-based, ``x`` the column,
    each in ascending deviation with ties in row-major order. Thresholds are in ADU.
    """

    cold: np.ndarray
    hot: np.ndarray
    stats: ImageStats
    cold_aggressiveness: float
    hot_aggressiveness: float
    cold_sigma: float
    hot_sigma: float
    candidate_threshold: int
    cold_threshold: int
    hot_threshold: int
    delta_cold: int
    delta_hot: int

    @property
    def pixels(self) -> np.ndarray:
        """All defects in map order, cold then hot: ``(n, 2)`` of ``(x, y)``."""
        return np.concatenate([self.cold, self.hot])


def _select(deviation: np.ndarray, minimum: int, width: int) -> np.ndarray:
    """Pixels with ``deviation >= minimum`` as (x, y), ascending deviation, ties row-major."""
    flat = deviation.reshape(-1)
    index = np.flatnonzero(flat >= minimum)  # row-major order
    order = np.argsort(flat[index], kind="stable")
    index = index[order]
    return np.column_stack([index % width, index // width]).astype(np.int64)


def build_defect_map(
    master: np.ndarray,
    filtered: np.ndarray,
    hot_aggressiveness: float = 75,
    cold_aggressiveness: float = 75,
) -> DefectMapResult:
    """Select PHD2's hot and cold pixels from a master dark and its median-filtered version.

    Parameters
    ----------
    master : numpy.ndarray
        2-D ``uint16`` master dark (PHD2: the integer mean of the dark frames).
    filtered : numpy.ndarray
        ``phd2_median_filter(master)``, same shape and dtype.
    hot_aggressiveness, cold_aggressiveness : float, optional
        0..100 (clamped); higher finds more defects. PHD2's UI default is 75.

    Returns
    -------
    DefectMapResult
        The cold and hot pixels and the statistics and thresholds used.

    Notes
    -----
    PHD2's rule (``DefectMapBuilder``, reference/phd2.md §3), in our words: with the master's
    population ``stdev``, a pixel is a *candidate* when its deviation ``v = master - filtered``
    exceeds ``int(0.125 · stdev)`` (hot, deviation ``v``) or its opposite does (cold, deviation
    ``-v``). A candidate is *selected* when its deviation is at least
    ``int(aggressiveness_to_sigma(a) · stdev)`` for its kind. The map lists cold pixels, then
    hot, each by ascending deviation; we order ties row-major (PHD2's scan order).

    **Deliberate difference (a bug fix):** PHD2 keeps candidates in a set ordered by deviation
    alone, so of several pixels sharing one deviation value only the first scanned survives and
    the rest are silently dropped. We keep every pixel.
    """
    _check_uint16_2d("master", master)
    _check_uint16_2d("filtered", filtered)
    if master.shape != filtered.shape:
        raise ValueError(
            f"filtered shape {filtered.shape} does not match the master shape {master.shape}"
        )
    stats = image_stats(master)
    cold_aggr = float(min(max(cold_aggressiveness, 0), 100))
    hot_aggr = float(min(max(hot_aggressiveness, 0), 100))
    cold_sigma = aggressiveness_to_sigma(cold_aggr)
    hot_sigma = aggressiveness_to_sigma(hot_aggr)
    candidate = int(0.125 * stats.stdev)
    cold_threshold = int(cold_sigma * stats.stdev)
    hot_threshold = int(hot_sigma * stats.stdev)
    deviation = np.subtract(master, filtered, dtype=np.int32)
    width = master.shape[1]
    hot = _select(deviation, max(candidate + 1, hot_threshold), width)
    np.negative(deviation, out=deviation)
    cold = _select(deviation, max(candidate + 1, cold_threshold), width)
    return DefectMapResult(
        cold=cold,
        hot=hot,
        stats=stats,
        cold_aggressiveness=cold_aggr,
        hot_aggressiveness=hot_aggr,
        cold_sigma=cold_sigma,
        hot_sigma=hot_sigma,
        candidate_threshold=candidate,
        cold_threshold=cold_threshold,
        hot_threshold=hot_threshold,
        delta_cold=-cold_threshold,
        delta_hot=hot_threshold,
    )


@numba.njit(cache=True, nogil=True)
def _fix_pixels(img: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> None:
    """Replace each listed pixel, in order, by the median of its in-image neighbours."""
    height, width = img.shape
    buf = np.empty(8, np.int64)
    for p in range(xs.shape[0]):
        x = xs[p]
        y = ys[p]
        if x < 0 or y < 0 or x >= width or y >= height:
            continue
        n = 0
        for dy in range(-1, 2):
            for dx in range(-1, 2):
                if dx == 0 and dy == 0:
                    continue
                yy = y + dy
                xx = x + dx
                if 0 <= yy < height and 0 <= xx < width:
                    v = np.int64(img[yy, xx])
                    j = n - 1
                    while j >= 0 and buf[j] > v:
                        buf[j + 1] = buf[j]
                        j -= 1
                    buf[j + 1] = v
                    n += 1
        if n == 0:
            continue
        if n % 2 == 1:
            img[y, x] = buf[n // 2]
        else:
            img[y, x] = (buf[n // 2 - 1] + buf[n // 2]) // 2


def remove_defects(image: np.ndarray, pixels: np.ndarray | Sequence[tuple[int, int]]) -> np.ndarray:
    """Return a copy of ``image`` with each defect replaced by the median of its neighbours.

    Parameters
    ----------
    image : numpy.ndarray
        2-D ``uint16`` frame. Not modified.
    pixels : array_like
        ``(n, 2)`` of ``(x, y)`` (column, row), in map order. Pixels outside the image are skipped.

    Returns
    -------
    numpy.ndarray
        The corrected ``uint16`` copy.

    Notes
    -----
    As PHD2's ``RemoveDefects``, pixels are corrected one after another *in place in the copy*,
    so a corrected pixel is what later neighbours see. The neighbours are the 8 surrounding
    pixels inside the image (5 on an edge, 3 in a corner). An odd count takes the middle value;
    8 (an even count) takes the floor of the mean of the 4th and 5th smallest, our definition,
    since PHD2's ``median8`` is not specified in our reference. (Degenerate 1-pixel-wide images
    use the same rule; a 1×1 image has no neighbours and is left as is.)
    """
    _check_uint16_2d("image", image)
    coords = np.asarray(pixels, dtype=np.int64).reshape(-1, 2)
    out = image.copy()
    _fix_pixels(out, np.ascontiguousarray(coords[:, 0]), np.ascontiguousarray(coords[:, 1]))
    return out
