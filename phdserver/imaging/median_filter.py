"""PHD2's 31×31 median filter (the "filtered dark" of a defect map), exact and fast.

PHD2 estimates the local background of a master dark with a square median filter of half-width
15 whose window is *truncated* at the image edges (no padding: a corner pixel's window holds only
16×16 values) and whose median is the element of 0-based rank ``n // 2`` of the sorted window (the
upper median when ``n`` is even). scipy's ``median_filter(size=31)`` needs 17.5 s for a
1280×960 frame on this machine, so we run Huang's sliding-histogram algorithm in numba instead.

Threads and the GIL: the kernel is compiled with ``nogil=True``, so a trio worker thread running
:func:`phd2_median_filter` leaves the event loop free while it works. The row bands are spread
over ``workers`` plain threads (not numba's ``parallel=True``, whose default threading layer
aborts the process when two Python threads launch parallel kernels at once). Numba compiles the
kernel on first use (or loads it from its on-disk cache, ``cache=True``) while *holding* the GIL;
call :func:`warm_up` once at start-up, before serving clients, so that pause never hits a
running server.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

__all__ = ["default_workers", "phd2_median_filter", "reference_median_filter", "warm_up"]

_BINS = 65536
_COARSE_SHIFT = 8
_COARSE_BINS = _BINS >> _COARSE_SHIFT
_COARSE_WIDTH = 1 << _COARSE_SHIFT


def default_workers() -> int:
    """Threads to use for one image: the CPUs this process may run on (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


# A row whose median search takes more than this many steps per pixel on average switches the
# rest of its band to the coarse-histogram search. Darks need a few steps per pixel; adversarial
# images (stripes whose median flips between extremes) would otherwise need up to 65535.
_STEP_BUDGET_PER_PIXEL = 64


@numba.njit(cache=True, nogil=True)
def _filter_row(
    img: np.ndarray,
    width: int,
    out: np.ndarray,
    half: int,
    y: int,
    hist: np.ndarray,
    coarse: np.ndarray,
    use_coarse: bool,
    med: int,
) -> tuple[int, int]:
    """Filter row ``y`` into ``out[y]``; return the last median and the search steps taken.

    Huang's algorithm: ``hist`` holds the current window; moving one column right removes one
    column of values and adds another, and the median moves from its previous value. The running
    state is ``med`` and ``lt`` (the number of window values below ``med``); the value of rank
    ``k`` is ``med`` when ``lt <= k < lt + hist[med]``. With ``use_coarse``, ``coarse`` counts
    values per block of 256 and the search jumps over whole blocks, bounding it at ~512 steps.

    ``hist`` and ``coarse`` are empty on entry and on return (the last window's columns are
    removed at the end), so no 65536-bin clear is ever needed and ``lt`` starts at 0.
    """
    height = img.shape[0]
    r0 = max(0, y - half)
    r1 = min(height - 1, y + half)
    nrows = r1 - r0 + 1
    lt = 0
    steps = 0
    for c in range(0, min(width - 1, half) + 1):
        for r in range(r0, r1 + 1):
            v = np.int64(img[r, c])
            hist[v] += 1
            lt += v < med
            if use_coarse:
                coarse[v >> _COARSE_SHIFT] += 1
    for x in range(width):
        if x > 0:
            c_out = x - half - 1
            c_in = x + half
            if c_out >= 0 and c_in < width:
                if use_coarse:
                    for r in range(r0, r1 + 1):
                        vo = np.int64(img[r, c_out])
                        vi = np.int64(img[r, c_in])
                        hist[vo] -= 1
                        hist[vi] += 1
                        coarse[vo >> _COARSE_SHIFT] -= 1
                        coarse[vi >> _COARSE_SHIFT] += 1
                        lt += np.int64(vi < med) - np.int64(vo < med)
                else:
                    for r in range(r0, r1 + 1):
                        vo = np.int64(img[r, c_out])
                        vi = np.int64(img[r, c_in])
                        hist[vo] -= 1
                        hist[vi] += 1
                        lt += np.int64(vi < med) - np.int64(vo < med)
            elif c_out >= 0:
                for r in range(r0, r1 + 1):
                    vo = np.int64(img[r, c_out])
                    hist[vo] -= 1
                    lt -= vo < med
                    if use_coarse:
                        coarse[vo >> _COARSE_SHIFT] -= 1
            elif c_in < width:
                for r in range(r0, r1 + 1):
                    vi = np.int64(img[r, c_in])
                    hist[vi] += 1
                    lt += vi < med
                    if use_coarse:
                        coarse[vi >> _COARSE_SHIFT] += 1
        ncols = min(width - 1, x + half) - max(0, x - half) + 1
        k = (nrows * ncols) // 2
        # Move down while more than k values lie below med.
        while lt > k:
            steps += 1
            if use_coarse and (med & (_COARSE_WIDTH - 1)) == 0 and med > 0:
                below = np.int64(coarse[(med >> _COARSE_SHIFT) - 1])
                if lt - below > k:
                    med -= _COARSE_WIDTH
                    lt -= below
                    continue
            med -= 1
            lt -= np.int64(hist[med])
        # Move up while the value of rank k lies above med.
        while lt + np.int64(hist[med]) <= k:
            steps += 1
            if use_coarse and (med & (_COARSE_WIDTH - 1)) == 0:
                block = np.int64(coarse[med >> _COARSE_SHIFT])
                if lt + block <= k:
                    med += _COARSE_WIDTH
                    lt += block
                    continue
            lt += np.int64(hist[med])
            med += 1
        out[y, x] = med
    for c in range(max(0, width - 1 - half), width):
        for r in range(r0, r1 + 1):
            v = np.int64(img[r, c])
            hist[v] -= 1
            if use_coarse:
                coarse[v >> _COARSE_SHIFT] -= 1
    return med, steps


@numba.njit(cache=True, nogil=True)
def _filter_band(
    img: np.ndarray, width: int, out: np.ndarray, half: int, y_start: int, y_stop: int
) -> None:
    """Filter rows ``y_start:y_stop``, switching to the coarse search if a row is pathological."""
    hist = np.zeros(_BINS, np.int32)
    coarse = np.zeros(_COARSE_BINS, np.int32)
    use_coarse = False
    med = 0
    budget = _STEP_BUDGET_PER_PIXEL * width
    for y in range(y_start, y_stop):
        med, steps = _filter_row(img, width, out, half, y, hist, coarse, use_coarse, med)
        if steps > budget:
            use_coarse = True


def _padded_copy(image: np.ndarray) -> np.ndarray:
    """Copy ``image`` into rows whose length is an odd number of 64-byte cache lines.

    The kernel reads 31 rows of one column at a time; with a power-of-two row length (4096
    pixels = 8 KiB) those reads all map to the same cache sets and evict each other, which made
    the 4096² filter ~2× slower. The copy costs one frame of memory and a few milliseconds.
    """
    height, width = image.shape
    lines = -(-width // 32)
    if lines % 2 == 0:
        lines += 1
    padded = np.empty((height, lines * 32), np.uint16)
    padded[:, :width] = image
    return padded


def _check_image(image: np.ndarray, half_width: int) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint16:
        got = (
            f"{image.dtype} array of shape {image.shape}"
            if isinstance(image, np.ndarray)
            else type(image).__name__
        )
        raise ValueError(f"expected a 2-D uint16 image, got a {got}")
    if half_width < 0:
        raise ValueError(f"half_width must be >= 0, got {half_width}")


def _lower_priority() -> None:
    """Run a filter band at a lower CPU priority than the thread that asked for it.

    The bands use every core; at normal priority they crowd out the event loop of a daemon
    serving clients (its heartbeat was 25-61 ms late while a 4096² filter ran). Linux gives
    each thread its own nice value; elsewhere this does nothing.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def phd2_median_filter(
    image: np.ndarray, half_width: int = 15, *, workers: int | None = None
) -> np.ndarray:
    """Median-filter ``image`` the way PHD2 builds its filtered dark.

    Parameters
    ----------
    image : numpy.ndarray
        2-D ``uint16`` image (a master dark). Not modified.
    half_width : int, optional
        Half-width of the square window; PHD2 uses 15 (a 31×31 window).
    workers : int or None, optional
        Threads to spread the row bands over; None means :func:`default_workers`. The result does
        not depend on it. Pass 1 to keep a core free for other work.

    Returns
    -------
    numpy.ndarray
        ``uint16`` array of the same shape: for each pixel, the median of the window
        ``[x - h, x + h] × [y - h, y + h]`` clipped to the image.

    Notes
    -----
    The median of a window of ``n`` values is the element of 0-based rank ``n // 2`` of the sorted
    window, the *upper* median when ``n`` is even (edge windows can be even), as in PHD2's
    ``MedianFilter`` (reference/phd2.md §3). The output is bit-identical to
    :func:`reference_median_filter`.

    The work runs with the GIL released (numba ``nogil``), in row bands. Cost is about
    ``2·(2h+1)`` histogram updates per pixel plus a median search that is short when neighbouring
    windows have similar medians (darks); full-range random data is still exact, only slower.
    """
    _check_image(image, half_width)
    height, width = image.shape
    out = np.empty((height, width), np.uint16)
    if image.size == 0:
        return out
    img = _padded_copy(image)
    n_workers = default_workers() if workers is None else max(1, int(workers))
    n_bands = min(n_workers, height)
    if n_bands <= 1:
        _filter_band(img, width, out, half_width, 0, height)
        return out
    edges = np.linspace(0, height, n_bands + 1).astype(int)
    with ThreadPoolExecutor(max_workers=n_bands, thread_name_prefix="median_filter",
                            initializer=_lower_priority) as pool:
        futures = [
            pool.submit(_filter_band, img, width, out, half_width, int(a), int(b))
            for a, b in itertools.pairwise(edges)
        ]
        for fut in futures:
            fut.result()
    return out


def reference_median_filter(image: np.ndarray, half_width: int = 15) -> np.ndarray:
    """Plain, obviously correct version of :func:`phd2_median_filter`, for tests only (slow).

    Parameters
    ----------
    image : numpy.ndarray
        2-D ``uint16`` image.
    half_width : int, optional
        Half-width of the window.

    Returns
    -------
    numpy.ndarray
        ``uint16`` array: per pixel, the element of rank ``n // 2`` of its truncated window.
    """
    _check_image(image, half_width)
    height, width = image.shape
    out = np.empty_like(image)
    for y in range(height):
        r0, r1 = max(0, y - half_width), min(height, y + half_width + 1)
        for x in range(width):
            c0, c1 = max(0, x - half_width), min(width, x + half_width + 1)
            window = image[r0:r1, c0:c1].ravel()
            k = window.size // 2
            out[y, x] = np.partition(window, k)[k]
    return out


def warm_up() -> None:
    """Compile (or load from numba's cache) the filter kernel now, on a tiny image.

    The first call otherwise holds the GIL for the compile (about a second or two) inside
    whichever thread calls it first.
    """
    phd2_median_filter(np.zeros((3, 3), np.uint16), 1, workers=1)
