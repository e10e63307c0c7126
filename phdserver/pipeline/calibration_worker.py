"""Calibrating one light in a worker: the picklable task, its outcome, and :func:`calibrate_frame`.

:func:`calibrate_frame` is a module-level function of one picklable argument, so any
``concurrent.futures.Executor`` can run it (:mod:`.calibration_batch` drives the batch): a
process pool, a thread pool or a dask cluster. It never raises for a bad file: every problem
becomes a ``failed`` :class:`FrameOutcome` with its reason, and the batch goes on.

**Master terms.** Each worker precomputes the master terms (``offset``, flat gain) once per
master set and keeps the last two sets (keyed by the masters' paths, HDUs, checksums, sizes and
mtimes and the exposure the dark is scaled to) in a per-process LRU cache: an immutable memo,
the one piece of process state here, bounded to about 2 × 128 MiB for 4096² masters. Before each
light the worker ``stat``\\s its masters: a master whose size or mtime differs from the record
fails the frame ("changed on disk") instead of being used silently. The first light in a process
also loads the numba kernel from its cache (0.2-0.8 s).

**Bands.** A light is read, calibrated and written a band of rows at a time
(:data:`~phdserver.pipeline.calibration_io.BAND_BYTES`, 64 rows of a 4096-wide frame): the
stored values of a band are read into a small buffer, calibrated by the fused kernel into a
small big-endian float32 buffer, sampled for the quality figures and written, all while the
band is in the CPU cache. The whole-frame way (a 32 MiB light array and a 64 MiB output array
per frame) streamed about 100 MiB more through memory per 4096² light; banding made a frame
about 25 % faster with one worker here, and more with two, which share one memory bus. The
quality figures go into the header, which is written first with placeholder figures; their
cards are set and the header written again over the first (same cards, same size) once the
last band is out.
"""

from __future__ import annotations

import enum
import functools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phdserver.errors import LibraryError
from phdserver.imaging.calibration import (
    MasterTerms,
    QualitySampler,
    calibrate,
    calibrate_fits16,
)
from phdserver.library.fits_headers import FrameType
from phdserver.library.master_records import MasterRecord
from phdserver.pipeline.calibration_input import LightReader, open_light, read_master
from phdserver.pipeline.calibration_io import (
    SOFTWARE,
    MasterUse,
    Provenance,
    band_rows,
    calibrated_header,
    existing_output_problem,
    quality_cards,
    write_calibrated_bands,
)

__all__ = [
    "FrameOutcome",
    "FrameStatus",
    "FrameTask",
    "MasterRef",
    "calibrate_frame",
    "clear_worker_cache",
    "existing_output_outcome",
]


class FrameStatus(enum.StrEnum):
    PLANNED = "planned"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True, kw_only=True)
class MasterRef:
    """A master as a worker needs it: where it is and the fingerprint it must still have."""

    id: int
    kind: FrameType
    path: str
    hdu: int
    name: str
    checksum: str
    size_bytes: int
    mtime_ns: int
    exposure_s: float | None
    bias_subtracted: bool

    @classmethod
    def from_record(cls, record: MasterRecord) -> MasterRef:
        return cls(id=record.id, kind=record.frame_type, path=str(record.path), hdu=record.hdu,
                   name=record.name, checksum=record.checksum, size_bytes=record.size_bytes,
                   mtime_ns=record.mtime_ns, exposure_s=record.meta.exposure_s,
                   bias_subtracted=record.meta.bias_subtracted)

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__} | {
            "kind": self.kind.value}


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameTask:
    """One light to calibrate: everything :func:`calibrate_frame` needs, picklable."""

    light: str
    output: str
    bias: MasterRef | None
    dark: MasterRef | None
    flat: MasterRef | None
    light_exposure_s: float | None
    """The exposure the dark is scaled to (the dark's own when not scaled)."""
    notes: tuple[str, ...] = ()
    overwrite: bool = False
    software: str = SOFTWARE

    @property
    def master_set(self) -> tuple[Any, ...]:
        return (self.bias, self.dark, self.flat, self.light_exposure_s)

    def to_json(self) -> dict[str, Any]:
        masters = {"bias": self.bias, "dark": self.dark, "flat": self.flat}
        return {"light": self.light, "output": self.output,
                **{k: (v.to_json() if v else None) for k, v in masters.items()},
                "light_exposure_s": self.light_exposure_s, "notes": list(self.notes),
                "overwrite": self.overwrite, "software": self.software}


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameOutcome:
    """What became of one light."""

    light: str
    output: str
    status: FrameStatus
    reason: str = ""
    seconds: float = 0.0
    quality: dict[str, float | int] | None = None

    @classmethod
    def for_task(cls, task: FrameTask, status: FrameStatus, reason: str = "",
                 seconds: float = 0.0,
                 quality: dict[str, float | int] | None = None) -> FrameOutcome:
        return cls(light=task.light, output=task.output, status=status, reason=reason,
                   seconds=seconds, quality=quality)

    def to_json(self) -> dict[str, Any]:
        return {"light": self.light, "output": self.output, "status": self.status.value,
                "reason": self.reason, "seconds": self.seconds, "quality": self.quality}


def calibrate_frame(task: FrameTask) -> FrameOutcome:
    """Calibrate one light and write its output; never raises for a bad file (``failed``)."""
    started = time.perf_counter()
    try:
        if not task.overwrite and os.path.lexists(task.output):
            return existing_output_outcome(task)
        refs = [r for r in (task.bias, task.dark, task.flat) if r is not None]
        for ref in refs:
            _check_unchanged(ref)
        terms = _terms(task.bias, task.dark, task.flat, task.light_exposure_s)
        sampler = QualitySampler(terms.shape)
        with open_light(Path(task.light)) as light:
            _check_shape(light.shape, terms.shape)
            provenance = Provenance(
                masters=tuple(MasterUse(kind=r.kind.value, name=r.name, checksum=r.checksum)
                              for r in refs),
                steps=(*terms.steps, *task.notes), quality=sampler.figures(),  # placeholders
                dark_scale=terms.dark_scale if task.dark is not None else None,
                flat_median=terms.flat_median, bad_flat_pixels=terms.bad_flat_pixels,
                software=task.software)
            write_calibrated_bands(
                Path(task.output), terms.shape, _calibrated_bands(light, terms, sampler),
                calibrated_header(light.header, terms.shape, provenance),
                final_cards=lambda: quality_cards(sampler.figures()),
                overwrite=task.overwrite, source=Path(task.light))
    except FileExistsError:
        return existing_output_outcome(task)
    except LibraryError as exc:
        return FrameOutcome.for_task(task, FrameStatus.FAILED, exc.message,
                                     time.perf_counter() - started)
    except (OSError, ValueError, MemoryError) as exc:
        return FrameOutcome.for_task(task, FrameStatus.FAILED, f"{type(exc).__name__}: {exc}",
                                     time.perf_counter() - started)
    return FrameOutcome.for_task(task, FrameStatus.DONE, "", time.perf_counter() - started,
                                 sampler.figures().to_json())


def existing_output_outcome(task: FrameTask) -> FrameOutcome:
    """Skip a finished output; report one that is not (never overwritten unless asked)."""
    problem = existing_output_problem(Path(task.output))
    if problem is None:
        return FrameOutcome.for_task(task, FrameStatus.SKIPPED, "output exists")
    return FrameOutcome.for_task(task, FrameStatus.FAILED,
                                 f"the output exists but {problem}; run again with overwrite "
                                 "to replace it")


def clear_worker_cache() -> None:
    """Drop this process's cached master terms (the daemon does after a batch)."""
    _terms.cache_clear()


def _calibrated_bands(light: LightReader, terms: MasterTerms,
                      sampler: QualitySampler) -> Iterator[np.ndarray]:
    """Each band of the calibrated light in turn, in one reused ``>f4`` buffer."""
    height, width = terms.shape
    rows = band_rows(width)
    out = np.empty((min(rows, height), width), ">f4")
    for start in range(0, height, rows):
        stop = min(height, start + rows)
        stored = light.read_rows(start, stop)
        band = out[: stop - start]
        if stored.dtype == np.dtype(">i2"):
            calibrate_fits16(stored, terms.rows(start, stop), bzero=light.zero, out=band)
        else:
            calibrate(stored, terms.rows(start, stop), out=band)
        sampler.add(start, band)
        yield band


def _check_shape(light: tuple[int, ...], masters: tuple[int, int]) -> None:
    if light != masters:
        raise LibraryError(f"the light is {light[-1]}x{light[0]}, its masters are "
                           f"{masters[1]}x{masters[0]}")


def _check_unchanged(ref: MasterRef) -> None:
    try:
        st = os.stat(ref.path)
    except FileNotFoundError:
        raise LibraryError(f"master {ref.kind.value} {ref.path} no longer exists") from None
    if (st.st_size, st.st_mtime_ns) != (ref.size_bytes, ref.mtime_ns):
        raise LibraryError(f"master {ref.kind.value} {ref.name} changed on disk since it was "
                           "checked; verify the library and plan again")


@functools.lru_cache(maxsize=2)
def _terms(bias: MasterRef | None, dark: MasterRef | None, flat: MasterRef | None,
           light_exposure_s: float | None) -> MasterTerms:
    def load(ref: MasterRef | None) -> np.ndarray | None:
        return None if ref is None else read_master(Path(ref.path), ref.hdu)[0]

    return MasterTerms.from_masters(
        bias=load(bias), dark=load(dark), flat=load(flat), light_exposure_s=light_exposure_s,
        dark_exposure_s=dark.exposure_s if dark else None,
        dark_includes_bias=not (dark.bias_subtracted if dark else False))
