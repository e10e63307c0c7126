"""Applying a dark library to a frame the way PHD2 does: pick the dark, subtract with a pedestal."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from phdserver.imaging.defects import upper_median

__all__ = ["select_dark_exposure", "subtract_dark"]


def select_dark_exposure(available_ms: Sequence[int], exposure_ms: int) -> int:
    """Choose the library dark for a frame of ``exposure_ms``: PHD2's ``SelectDark`` rule.

    Parameters
    ----------
    available_ms : sequence of int
        Exposures of the darks in the library, in ms, any order.
    exposure_ms : int
        Exposure of the frame to calibrate, in ms.

    Returns
    -------
    int
        The smallest available exposure ``>= exposure_ms``, or the longest one when none is long
        enough (a longer dark over-subtracts less visibly than a shorter one under-subtracts).
    """
    if not available_ms:
        raise ValueError("no dark exposures to choose from")
    longer = [e for e in available_ms if e >= exposure_ms]
    return min(longer) if longer else max(available_ms)


def subtract_dark(light: np.ndarray, dark: np.ndarray) -> np.ndarray:
    """Subtract ``dark`` from ``light`` with PHD2's pedestal, clamped to ``uint16``.

    Parameters
    ----------
    light : numpy.ndarray
        2-D ``uint16`` frame. Not modified.
    dark : numpy.ndarray
        2-D ``uint16`` dark of the same shape (crop it to the frame's subframe first: PHD2 takes
        the dark's median over the ROI).

    Returns
    -------
    numpy.ndarray
        ``clip(light + pedestal - dark, 0, 65535)`` as ``uint16``.

    Notes
    -----
    ``pedestal = max(median(dark) - median(light), 0)`` (``image_math.cpp`` in PHD2,
    reference/phd2.md §2): when the dark is brighter overall than the light (e.g. a warmer
    sensor), the pedestal keeps the background from being clipped to 0. Medians are the
    element of rank ``N // 2`` (upper median), PHD2's definition elsewhere in its image code.
    """
    for name, image in (("light", light), ("dark", dark)):
        if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint16:
            raise ValueError(f"{name} must be a 2-D uint16 image")
    if light.shape != dark.shape:
        raise ValueError(f"dark shape {dark.shape} does not match the light shape {light.shape}")
    if light.size == 0:
        return light.copy()
    pedestal = max(upper_median(dark) - upper_median(light), 0)
    out = np.subtract(light, dark, dtype=np.int32)
    out += pedestal
    np.clip(out, 0, 65535, out=out)
    return out.astype(np.uint16)
