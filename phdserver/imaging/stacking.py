"""Combining dark frames into a master, one frame at a time.

The caller (a dark-library or defect-map operation) receives ``uint16`` frames from a camera one
by one and runs this code in a trio worker thread. Memory is the constraint: 25 frames of a
4096² sensor are 800 MiB, and ccdproc needs ~7× its input. So:

* ``"mean"`` (PHD2's master dark) and ``"minmax_mean"`` are *streaming*: each frame is folded into
  a ``uint32`` running sum (and running min/max) and can then be dropped. Memory does not depend
  on the frame count.
* ``"median"`` and ``"sigma_clip"`` need every frame of a pixel at once. The caller provides the
  ``(N, H, W)`` buffer (typically an ``np.memmap`` spool file it owns, so frames live in the page
  cache, not the heap); :class:`BufferedStacker` copies frames into it and combines it in row
  tiles, so the working memory is one tile, not N frames. Between tiles it calls the caller's
  ``cancel_check`` (``trio.from_thread.check_cancelled``) so a long median can be abandoned.

The per-pixel median and clip run in numba with the GIL released. No I/O happens here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numba
import numpy as np

__all__ = [
    "COMBINE_MODES",
    "MAX_FRAMES",
    "BufferedStacker",
    "CancelCheck",
    "MeanStacker",
    "MinMaxMeanStacker",
    "Stacker",
    "make_stacker",
]

COMBINE_MODES: tuple[str, ...] = ("mean", "median", "minmax_mean", "sigma_clip")
_BUFFERED_MODES = ("median", "sigma_clip")

# A uint32 sum of uint16 frames cannot overflow below this many frames.
MAX_FRAMES = (2**32 - 1) // 65535
# Rows per tile when a result is computed piecewise.
DEFAULT_TILE_ROWS = 64
# Median/MAD clip: reject |x - median| > _CLIP_SIGMAS · _MAD_TO_SIGMA · MAD. The factor is
# 1 / Φ⁻¹(3/4), the "1.4826" of a Gaussian, to full precision as astropy's ``mad_std`` (which
# ccdproc uses) has it, so our clip makes the same decisions as ccdproc's.
_CLIP_SIGMAS = 3.0
_MAD_TO_SIGMA = 1.482602218505602

CancelCheck = Callable[[], None]


class Stacker(Protocol):
    """What an operation needs from a combiner: feed frames, then ask for the master."""

    @property
    def count(self) -> int:
        """Frames added so far."""
        ...

    def add(self, frame: np.ndarray) -> None:
        """Fold in one 2-D ``uint16`` frame (not kept, not modified)."""
        ...

    def result(self, cancel_check: CancelCheck | None = None) -> np.ndarray:
        """The ``uint16`` master of the frames added so far; may be called more than once."""
        ...


def _check_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) != 2 or any(int(n) < 1 for n in shape):
        raise ValueError(f"frame shape must be two positive sizes, got {shape}")
    return int(shape[0]), int(shape[1])


def _check_frame(frame: np.ndarray, shape: tuple[int, int]) -> None:
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.shape != shape:
        raise ValueError(f"frame shape {frame.shape} does not match the stack shape {shape}")
    if frame.dtype != np.uint16:
        raise ValueError(f"frame dtype is {frame.dtype}, the stack needs uint16")


def _check_capacity(count: int, capacity: int) -> None:
    if count >= capacity:
        raise ValueError(f"stack is full: it holds {capacity} frames")


def _row_tiles(height: int, tile_rows: int) -> list[tuple[int, int]]:
    return [(r, min(r + tile_rows, height)) for r in range(0, height, tile_rows)]


class MeanStacker:
    """PHD2's master dark: the truncating integer mean of the frames.

    Parameters
    ----------
    shape : tuple of int
        ``(height, width)`` of every frame.
    capacity : int, optional
        Most frames accepted (at most 65537, where a ``uint32`` sum could overflow).

    Notes
    -----
    ``add`` sums into one ``uint32`` accumulator in place (numpy casts the ``uint16`` frame in
    small chunks, so no frame-sized temporary exists) and ``result`` divides straight into the
    ``uint16`` output: memory is the accumulator (2 frames) plus the output (1 frame), whatever the
    count. ``result`` is ``sum // n``, truncating, exactly PHD2's ``CreateMasterDarkFrame``
    (reference/phd2.md §2), e.g. frames of 1 and 2 give 1.
    """

    def __init__(self, shape: tuple[int, int], *, capacity: int = MAX_FRAMES) -> None:
        self.shape = _check_shape(shape)
        self._capacity = min(int(capacity), MAX_FRAMES)
        self._sum = np.zeros(self.shape, np.uint32)
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def add(self, frame: np.ndarray) -> None:
        _check_frame(frame, self.shape)
        _check_capacity(self._count, self._capacity)
        np.add(self._sum, frame, out=self._sum, casting="unsafe")
        self._count += 1

    def result(self, cancel_check: CancelCheck | None = None) -> np.ndarray:
        """Return ``sum // count`` as ``uint16``. ``cancel_check`` is unused: this takes ms."""
        if self._count == 0:
            raise ValueError("no frames to combine")
        out = np.empty(self.shape, np.uint16)
        np.floor_divide(self._sum, self._count, out=out, casting="unsafe")
        return out


class MinMaxMeanStacker:
    """Mean after rejecting each pixel's lowest and highest value, streamed.

    Parameters
    ----------
    shape : tuple of int
        ``(height, width)`` of every frame.
    capacity : int, optional
        Most frames accepted (at most 65537).

    Notes
    -----
    Keeps a ``uint32`` running sum and running ``uint16`` minimum and maximum (4 frame-sized
    buffers in all). The result is ``(sum - min - max) / (n - 2)`` **rounded half up**, computed
    exactly in integers as ``(s + d // 2) // d``; it is computed in row tiles so no frame-sized
    temporary exists. With fewer than 3 frames nothing can be rejected and the result is the plain
    mean, rounded half up as well. Rejecting one value per side removes a single cosmic ray per
    pixel at any N ≥ 3 (reference/calibration.md §2a), but not two hits on one pixel.
    """

    def __init__(self, shape: tuple[int, int], *, capacity: int = MAX_FRAMES) -> None:
        self.shape = _check_shape(shape)
        self._capacity = min(int(capacity), MAX_FRAMES)
        self._sum = np.zeros(self.shape, np.uint32)
        self._min: np.ndarray | None = None
        self._max: np.ndarray | None = None
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def add(self, frame: np.ndarray) -> None:
        _check_frame(frame, self.shape)
        _check_capacity(self._count, self._capacity)
        np.add(self._sum, frame, out=self._sum, casting="unsafe")
        if self._min is None or self._max is None:
            self._min = frame.copy()
            self._max = frame.copy()
        else:
            np.minimum(self._min, frame, out=self._min)
            np.maximum(self._max, frame, out=self._max)
        self._count += 1

    def result(self, cancel_check: CancelCheck | None = None) -> np.ndarray:
        """Return the min/max-rejected mean as ``uint16``, calling ``cancel_check`` per tile."""
        if self._count == 0 or self._min is None or self._max is None:
            raise ValueError("no frames to combine")
        reject = self._count >= 3
        divisor = self._count - 2 if reject else self._count
        out = np.empty(self.shape, np.uint16)
        for r0, r1 in _row_tiles(self.shape[0], 4 * DEFAULT_TILE_ROWS):
            if cancel_check is not None:
                cancel_check()
            tile = self._sum[r0:r1].copy()
            if reject:
                tile -= self._min[r0:r1]
                tile -= self._max[r0:r1]
            tile += divisor // 2
            np.floor_divide(tile, divisor, out=out[r0:r1], casting="unsafe")
        return out


def _selection_network(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Comparators ``(lo[c], hi[c])`` that leave the two middle ranks of ``n`` values in place.

    Batcher's odd-even merge sort for the next power of two, minus comparators touching indices
    ``>= n`` (think of them as +inf: they never move), minus comparators the middle ranks
    ``(n-1)//2`` and ``n//2`` do not depend on. A fixed network has no data-dependent branches,
    so numba runs each comparator over a whole row chunk with SIMD min/max: ~10× faster than
    sorting pixel by pixel.
    """
    size = 1
    while size < n:
        size *= 2
    comps: list[tuple[int, int]] = []
    merge = 1
    while merge < size:
        k = merge
        while k >= 1:
            for j in range(k % merge, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * merge) == (i + j + k) // (2 * merge):
                        comps.append((i + j, i + j + k))
            k //= 2
        merge *= 2
    needed = {(n - 1) // 2, n // 2}
    kept: list[tuple[int, int]] = []
    for a, b in reversed(comps):
        if b < n and (a in needed or b in needed):
            kept.append((a, b))
            needed.update((a, b))
    kept.reverse()
    lo = np.array([a for a, _ in kept], np.int64)
    hi = np.array([b for _, b in kept], np.int64)
    return lo, hi


_CHUNK = 512  # pixels of one row processed together: (N, 512) int32 scratch stays in L1/L2


@numba.njit(cache=True, nogil=True, inline="always")
def _apply_network(s: np.ndarray, lo: np.ndarray, hi: np.ndarray, m: int) -> None:
    for c in range(lo.shape[0]):
        a = s[lo[c]]
        b = s[hi[c]]
        for x in range(m):
            u = a[x]
            v = b[x]
            a[x] = min(u, v)
            b[x] = max(u, v)


@numba.njit(cache=True, nogil=True)
def _combine_rows(
    stack: np.ndarray,
    out: np.ndarray,
    r_start: int,
    r_stop: int,
    clip: bool,
    lo: np.ndarray,
    hi: np.ndarray,
) -> None:
    """Rows ``r_start:r_stop`` of ``stack`` (n, H, W): per pixel median or median/MAD clip.

    The whole arrays are passed with a row range (not sliced tiles) so numba sees the same
    C-contiguous array types on every call and compiles one specialisation, at warm-up.

    Twice the median, ``med2``, is an exact integer, and so are the doubled deviations
    ``|2x - med2|`` whose middle ranks give 4·MAD. The floats then compared
    (``|x - median| <= 3 · (1.482602… · MAD)``) are formed exactly as numpy would form them from
    ``np.median``, so the result equals the plain numpy recipe bit for bit.
    """
    n, _, width = stack.shape
    s = np.empty((n, _CHUNK), np.int32)
    vals = np.empty((n, _CHUNK), np.int32)
    med2 = np.empty(_CHUNK, np.int32)
    r_lo = (n - 1) // 2
    r_hi = n // 2
    for r in range(r_start, r_stop):
        for x0 in range(0, width, _CHUNK):
            m = min(_CHUNK, width - x0)
            for i in range(n):
                for x in range(m):
                    s[i, x] = stack[i, r, x0 + x]
            if clip and n < 3:
                for x in range(m):
                    total = 0
                    for i in range(n):
                        total += s[i, x]
                    out[r, x0 + x] = (2 * total + n) // (2 * n)
                continue
            if clip:
                vals[:, :m] = s[:, :m]
            _apply_network(s, lo, hi, m)
            for x in range(m):
                med2[x] = s[r_lo, x] + s[r_hi, x]
            if not clip:
                for x in range(m):
                    out[r, x0 + x] = (med2[x] + 1) // 2
                continue
            for i in range(n):
                for x in range(m):
                    s[i, x] = abs(2 * vals[i, x] - med2[x])
            _apply_network(s, lo, hi, m)
            for x in range(m):
                mad = (s[r_lo, x] + s[r_hi, x]) / 4.0
                limit = _CLIP_SIGMAS * (_MAD_TO_SIGMA * mad)
                median = med2[x] / 2.0
                total = 0
                kept = 0
                for i in range(n):
                    v = vals[i, x]
                    if abs(v - median) <= limit:
                        total += v
                        kept += 1
                out[r, x0 + x] = (2 * total + kept) // (2 * kept)


class BufferedStacker:
    """Median or median/MAD sigma-clipped mean over a caller-owned ``(N, H, W)`` buffer.

    Parameters
    ----------
    buffer : numpy.ndarray
        ``uint16`` array of shape ``(N, H, W)``, e.g. an ``np.memmap`` spool file; frame ``i``
        is copied into ``buffer[i]``. Owned and cleaned up by the caller.
    mode : {"median", "sigma_clip"}
        The combine.
    tile_rows : int, optional
        Rows combined per tile; the working memory and the cancel granularity. The result does
        not depend on it.

    Notes
    -----
    ``"median"``: per pixel, the usual median (the mean of the two middle values for even N),
    **rounded half up** to ``uint16``.

    ``"sigma_clip"``: per pixel, ``median`` and ``sigma = 1.4826 · MAD`` (MAD = median of
    ``|x - median|``; the factor is 1/Φ⁻¹(3/4) = 1.482602218505602, astropy's ``mad_std`` as
    ccdproc uses it); values with ``|x - median| > 3 · sigma`` are
    rejected and the survivors averaged, rounded half up. When MAD is 0 only the values equal
    to the median survive (there always are some). With N < 3 it is the plain mean, rounded half
    up. We clip around the median and MAD rather than the mean and standard deviation because a
    lone outlier among N samples lies at most ``sqrt(N - 1)`` standard deviations from their mean
    (Samuelson's inequality): a mean/std 3σ clip cannot reject a single cosmic ray below N = 11
    (reference/calibration.md §2a), and dark stacks are usually smaller.
    """

    def __init__(
        self, buffer: np.ndarray, mode: str, *, tile_rows: int = DEFAULT_TILE_ROWS
    ) -> None:
        if mode not in _BUFFERED_MODES:
            raise ValueError(f"mode must be one of {_BUFFERED_MODES}, got {mode!r}")
        if not isinstance(buffer, np.ndarray) or buffer.ndim != 3 or buffer.dtype != np.uint16:
            raise ValueError("buffer must be a uint16 array of shape (frames, height, width)")
        if tile_rows < 1:
            raise ValueError(f"tile_rows must be >= 1, got {tile_rows}")
        self.shape = _check_shape(buffer.shape[1:])
        self.mode = mode
        self._buffer = buffer
        self._tile_rows = int(tile_rows)
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def add(self, frame: np.ndarray) -> None:
        _check_frame(frame, self.shape)
        _check_capacity(self._count, self._buffer.shape[0])
        self._buffer[self._count] = frame
        self._count += 1

    def result(self, cancel_check: CancelCheck | None = None) -> np.ndarray:
        """Combine the frames added so far, tile by tile, calling ``cancel_check`` before each.

        Whatever ``cancel_check`` raises (e.g. ``trio.Cancelled``) propagates unchanged.
        """
        if self._count == 0:
            raise ValueError("no frames to combine")
        out = np.empty(self.shape, np.uint16)
        clip = self.mode == "sigma_clip"
        lo, hi = _selection_network(self._count)
        frames = np.asarray(self._buffer[: self._count])  # a memmap becomes a plain view
        for r0, r1 in _row_tiles(self.shape[0], self._tile_rows):
            if cancel_check is not None:
                cancel_check()
            _combine_rows(frames, out, r0, r1, clip, lo, hi)
        return out


def make_stacker(
    mode: str, shape: tuple[int, int], count: int, buffer: np.ndarray | None = None
) -> Stacker:
    """Return a stacker for ``count`` frames of ``shape`` combined with ``mode``.

    Parameters
    ----------
    mode : str
        One of :data:`COMBINE_MODES`.
    shape : tuple of int
        ``(height, width)`` of every frame.
    count : int
        Frames that will be added (a maximum).
    buffer : numpy.ndarray, optional
        Required for ``"median"`` and ``"sigma_clip"``: a ``uint16`` array of shape
        ``(count, height, width)``. Ignored by the streaming modes.

    Returns
    -------
    Stacker
        An object with ``add(frame)``, ``count`` and ``result(cancel_check=None)``.
    """
    if mode not in COMBINE_MODES:
        raise ValueError(f"combine mode must be one of {COMBINE_MODES}, got {mode!r}")
    shape = _check_shape(tuple(shape))
    if not 1 <= count <= MAX_FRAMES:
        raise ValueError(f"count must be in 1..{MAX_FRAMES}, got {count}")
    if mode == "mean":
        return MeanStacker(shape, capacity=count)
    if mode == "minmax_mean":
        return MinMaxMeanStacker(shape, capacity=count)
    if buffer is None:
        raise ValueError(f"combine mode {mode!r} needs a (count, height, width) uint16 buffer")
    if buffer.shape != (count, *shape):
        raise ValueError(
            f"buffer shape {buffer.shape} does not match (count, height, width) {(count, *shape)}"
        )
    return BufferedStacker(buffer, mode)
