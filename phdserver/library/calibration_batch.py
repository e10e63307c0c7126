"""Calibrating a batch of lights: plan (which masters for which light), then run on an Executor.

:func:`plan_batch` reads each light's header, matches it against the library
(:mod:`.matching`) and records, per light, either a picklable :class:`FrameTask` or the reason
none can be made. :func:`run_batch` submits one task per light to a
:class:`concurrent.futures.Executor` and collects one :class:`FrameOutcome` per light: ``done``,
``skipped`` (the output exists; ``overwrite`` replaces it), ``failed`` (with the reason; the batch
goes on) or ``cancelled``. A dry run (``dry_run=True``) submits nothing and writes nothing: each
light is reported ``planned`` or ``skipped``.

**Workers.** :func:`calibrate_frame` is a module-level function of one picklable argument, so
any Executor can run it: a :class:`~concurrent.futures.ProcessPoolExecutor` (the default, with
the ``spawn`` start method because the daemon is multi-threaded), a thread pool, or a dask
cluster. Each worker precomputes the master terms (``offset``, flat gain) once per master set
and keeps the last two sets (keyed by the masters' paths, HDUs, checksums, sizes and mtimes and
the exposure the dark is scaled to) in a per-process LRU cache: an immutable memo, the one
piece of process state in this package, bounded to about 2 × 128 MiB for 4096² masters. Tasks
are submitted grouped by master set so that cache stays warm. The first light in a process also
loads the numba kernel from its cache (0.2-0.8 s). Before each light, the worker
``stat``\\s its masters: a master whose size or mtime differs from the record fails the frame
("changed on disk") instead of being used silently.

**On a dask cluster** (``pip install distributed``; not a phdserver dependency)::

    from distributed import Client
    from phdserver.library.calibration_batch import plan_with_library, run_batch
    from phdserver.library.masters_db import MastersDB

    client = Client("tcp://scheduler:8786")
    with MastersDB.in_data_dir(data_dir) as db:
        plan = plan_with_library(db, lights, output_dir=out_dir)
    report = run_batch(plan, client.get_executor(pure=False),
                       max_in_flight=2 * sum(client.nthreads().values()))

``Client.get_executor()`` returns a ``concurrent.futures.Executor`` whose futures work with
``concurrent.futures.wait`` and ``Future.cancel`` (which cancels the dask task); ``pure=False``
stops dask from reusing the result of an identical earlier submission. Every worker must have
phdserver installed and see the lights, masters and output directory at the same paths (a
shared file system). ``max_in_flight`` bounds the tasks submitted ahead (default: twice the
worker count of our own pool, else twice the CPU count), which is also how fast a cancel stops.

Cancellation: when ``cancel_event`` is set, nothing more is submitted, queued tasks are
cancelled, and frames already being written finish (outputs are atomic either way).
Synchronous: the daemon runs :func:`run_batch` in a thread and forwards progress from the
callback.
"""

from __future__ import annotations

import enum
import functools
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from phdserver.errors import LibraryError
from phdserver.imaging.calibration import (
    MasterTerms,
    calibrate,
    calibrate_fits16,
    quality_figures,
)
from phdserver.library.calibration_io import (
    DEFAULT_SUFFIX,
    SOFTWARE,
    MasterUse,
    Provenance,
    calibrated_header,
    existing_output_problem,
    output_path_for,
    read_light,
    read_light_header,
    read_master,
    write_calibrated,
)
from phdserver.library.fits_headers import (
    FITS_SUFFIXES,
    FrameMetadata,
    FrameType,
    metadata_from_header,
)
from phdserver.library.masters_db import MasterRecord, MastersDB
from phdserver.library.matching import AmbiguousMatch, MatchPolicy, MatchResult, match_masters

__all__ = [
    "BatchPlan",
    "BatchProgress",
    "BatchReport",
    "FrameOutcome",
    "FrameStatus",
    "FrameTask",
    "MasterRef",
    "PlannedFrame",
    "calibrate_frame",
    "clear_worker_cache",
    "find_lights",
    "plan_batch",
    "plan_with_library",
    "run_batch",
]

ProgressCallback = Callable[["BatchProgress"], None]
_POLL_S = 0.2  # how often the collecting loop looks at cancel_event


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
class PlannedFrame:
    """One light of a plan: its task, or the problem that prevents one."""

    light: Path
    output: Path
    meta: FrameMetadata | None
    match: MatchResult | None
    task: FrameTask | None
    problem: str | None

    def to_json(self, *, explain: bool = False) -> dict[str, Any]:
        masters = {}
        if self.task is not None:
            masters = {r.kind.value: {"id": r.id, "name": r.name, "path": r.path}
                       for r in (self.task.bias, self.task.dark, self.task.flat) if r}
        out: dict[str, Any] = {"light": str(self.light), "output": str(self.output),
                               "masters": masters, "problem": self.problem,
                               "scaled_dark": bool(self.match and self.match.scaled_dark),
                               "dark_scale": self.match.dark_scale if self.match else None}
        if explain:
            out["meta"] = self.meta.to_json() if self.meta else None
            out["match"] = self.match.to_json() if self.match else None
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchPlan:
    frames: tuple[PlannedFrame, ...]
    policy: MatchPolicy

    def to_json(self, *, explain: bool = False) -> dict[str, Any]:
        return {"frames": [f.to_json(explain=explain) for f in self.frames],
                "policy": self.policy.to_json(),
                "runnable": sum(1 for f in self.frames if f.task is not None),
                "total": len(self.frames)}


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameOutcome:
    light: str
    output: str
    status: FrameStatus
    reason: str = ""
    seconds: float = 0.0
    quality: dict[str, float | int] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"light": self.light, "output": self.output, "status": self.status.value,
                "reason": self.reason, "seconds": self.seconds, "quality": self.quality}


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchProgress:
    done: int
    skipped: int
    failed: int
    cancelled: int
    total: int
    current_file: str | None
    elapsed_s: float
    eta_s: float | None

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchReport:
    outcomes: tuple[FrameOutcome, ...]
    """One per planned light, in plan order."""
    cancelled: bool
    dry_run: bool
    elapsed_s: float

    def count(self, status: FrameStatus) -> int:
        return sum(1 for o in self.outcomes if o.status is status)

    def to_json(self) -> dict[str, Any]:
        return {"outcomes": [o.to_json() for o in self.outcomes], "cancelled": self.cancelled,
                "dry_run": self.dry_run, "elapsed_s": self.elapsed_s,
                "counts": {s.value: self.count(s) for s in FrameStatus}}


def find_lights(paths: Iterable[Path], *, recursive: bool = False,
                suffix: str = DEFAULT_SUFFIX) -> list[Path]:
    """Files as given, plus the FITS files of directories, minus outputs named ``*<suffix>``."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            out.append(path)
            continue
        for entry in sorted(path.rglob("*") if recursive else path.iterdir()):
            name = entry.name.lower()
            if (entry.is_file() and not name.startswith(".") and name.endswith(FITS_SUFFIXES)
                    and not (suffix and Path(name).stem.endswith(suffix.lower()))):
                out.append(entry)
    return out


def plan_batch(
    lights: Sequence[Path],
    masters: Sequence[MasterRecord],
    *,
    policy: MatchPolicy | None = None,
    output_dir: Path | None = None,
    suffix: str = DEFAULT_SUFFIX,
    unusable: Mapping[int, str] | None = None,
    default_longitude_deg: float | None = None,
) -> BatchPlan:
    """Match every light; never raises for one bad light (its ``problem`` says why)."""
    policy = policy or MatchPolicy()
    master_paths = {os.path.abspath(m.path) for m in masters}
    taken: dict[str, Path] = {}
    frames = []
    for light in (Path(p).absolute() for p in lights):
        output = output_path_for(light, output_dir=output_dir, suffix=suffix).absolute()
        meta: FrameMetadata | None = None
        match: MatchResult | None = None
        problem: str | None = None
        try:
            header = read_light_header(light)
            meta = metadata_from_header(header, path=light,
                                        default_longitude_deg=default_longitude_deg)
            if header.get("CALIBRAT") is True:
                problem = "already calibrated (CALIBRAT = T)"
            elif meta.frame_type not in (None, FrameType.LIGHT):
                problem = f"not a light: its type is {meta.frame_type.value}"
            else:
                match = match_masters(meta, masters, policy, unusable=unusable)
                problem = match.problem()
        except (AmbiguousMatch, LibraryError) as exc:
            problem = exc.message
        key = str(output)
        if problem is None and (key == str(light) or key in master_paths):
            problem = f"the output {output} would overwrite an input; choose another suffix"
        elif problem is None and key in taken:
            problem = f"the output {output} is also the output of {taken[key]}"
        task = None
        if problem is None and match is not None and meta is not None:
            taken[key] = light
            task = _task(light, output, meta, match)
        frames.append(PlannedFrame(light=light, output=output, meta=meta, match=match,
                                   task=task, problem=problem))
    return BatchPlan(frames=tuple(frames), policy=policy)


def plan_with_library(db: MastersDB, lights: Sequence[Path], *, refresh: bool = True,
                      **kwargs: Any) -> BatchPlan:
    """:func:`plan_batch` against every master of ``db``, after verifying their files.

    Masters that are missing or changed on disk are rejected with the reason. ``refresh=False``
    (for a dry run) leaves the database untouched.
    """
    checks = db.verify(refresh=refresh)
    unusable = {c.record.id: c.message for c in checks if not c.usable}
    return plan_batch(lights, [c.record for c in checks], unusable=unusable, **kwargs)


def _task(light: Path, output: Path, meta: FrameMetadata, match: MatchResult) -> FrameTask:
    refs = {t: MasterRef.from_record(r) if r else None for t, r in match.chosen.items()}
    dark = refs[FrameType.DARK]
    exposure = meta.exposure_s if match.scaled_dark else (dark.exposure_s if dark else None)
    return FrameTask(light=str(light), output=str(output),
                     bias=refs[FrameType.BIAS] if match.bias_applied else None, dark=dark,
                     flat=refs[FrameType.FLAT], light_exposure_s=exposure, notes=match.notes)


def run_batch(
    plan: BatchPlan,
    executor: Executor | None = None,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    progress_callback: ProgressCallback | None = None,
    cancel_event: threading.Event | None = None,
    max_in_flight: int | None = None,
) -> BatchReport:
    """Calibrate every runnable light of ``plan``; see the module docstring.

    ``executor`` defaults to a ``ProcessPoolExecutor`` of ``workers`` processes (default: the
    CPU count, at most one per light), created and shut down here.
    """
    started = time.monotonic()
    outcomes: dict[int, FrameOutcome] = {}
    pending_tasks: list[tuple[int, FrameTask]] = []
    for index, frame in enumerate(plan.frames):
        light, output = str(frame.light), str(frame.output)
        if frame.task is None:
            outcomes[index] = FrameOutcome(light=light, output=output, status=FrameStatus.FAILED,
                                           reason=frame.problem or "no task")
        elif not overwrite and os.path.lexists(output):
            outcomes[index] = _existing(frame.task)
        elif dry_run:
            outcomes[index] = FrameOutcome(light=light, output=output, status=FrameStatus.PLANNED,
                                           reason="would overwrite" if os.path.lexists(output)
                                           else "")
        else:
            pending_tasks.append((index, replace(frame.task, overwrite=overwrite)))
    pending_tasks.sort(key=lambda item: repr(item[1].master_set))
    collector = _Collector(plan, outcomes, started, progress_callback)
    cancelled = False
    if pending_tasks:
        own = executor is None
        count = max(1, min(workers or os.cpu_count() or 1, len(pending_tasks)))
        pool = executor or ProcessPoolExecutor(
            max_workers=count, mp_context=multiprocessing.get_context("spawn"))
        limit = max_in_flight or 2 * (count if own else os.cpu_count() or 1)
        try:
            cancelled = _drive(pool, pending_tasks, limit, collector, cancel_event)
        finally:
            if own:
                pool.shutdown(wait=True, cancel_futures=True)
    else:
        collector.report(None)
    ordered = tuple(outcomes[i] for i in range(len(plan.frames)))
    return BatchReport(outcomes=ordered, cancelled=cancelled, dry_run=dry_run,
                       elapsed_s=time.monotonic() - started)


class _Collector:
    """Records outcomes and reports progress."""

    def __init__(self, plan: BatchPlan, outcomes: dict[int, FrameOutcome], started: float,
                 callback: ProgressCallback | None) -> None:
        self.plan, self.outcomes, self.started, self.callback = plan, outcomes, started, callback
        self.preset = len(outcomes)

    def add(self, index: int, outcome: FrameOutcome) -> None:
        self.outcomes[index] = outcome

    def report(self, current: str | None) -> None:
        if self.callback is None:
            return
        counts = {s: 0 for s in FrameStatus}
        for outcome in self.outcomes.values():
            counts[outcome.status] += 1
        total = len(self.plan.frames)
        elapsed = time.monotonic() - self.started
        ran = len(self.outcomes) - self.preset
        left = total - len(self.outcomes)
        eta = elapsed / ran * left if ran else None
        self.callback(BatchProgress(
            done=counts[FrameStatus.DONE], skipped=counts[FrameStatus.SKIPPED],
            failed=counts[FrameStatus.FAILED], cancelled=counts[FrameStatus.CANCELLED],
            total=total, current_file=current, elapsed_s=elapsed,
            eta_s=0.0 if left == 0 else eta))


def _drive(pool: Executor, tasks: list[tuple[int, FrameTask]], limit: int,
           collector: _Collector, cancel_event: threading.Event | None) -> bool:
    """Submit at most ``limit`` tasks ahead; collect; stop submitting on cancel."""
    queue = list(reversed(tasks))
    running: dict[Future[FrameOutcome], tuple[int, FrameTask]] = {}
    cancelled = False
    collector.report(None)
    while queue or running:
        if cancel_event is not None and cancel_event.is_set() and not cancelled:
            cancelled = True
            for future in running:
                future.cancel()
        while queue and len(running) < limit and not cancelled:
            index, task = queue.pop()
            try:
                running[pool.submit(calibrate_frame, task)] = (index, task)
            except RuntimeError as exc:  # a broken or shut-down executor
                queue.append((index, task))
                for left_index, left_task in reversed(queue):
                    collector.add(left_index, _outcome(left_task, FrameStatus.FAILED,
                                                       f"not submitted: {exc}"))
                queue.clear()
        if not running:
            break
        finished, _ = wait(running, timeout=_POLL_S, return_when=FIRST_COMPLETED)
        for future in finished:
            index, task = running.pop(future)
            collector.add(index, _result(future, task))
        if finished:
            current = next(iter(running.values()))[1].light if running else None
            collector.report(current)
    for index, task in reversed(queue):
        collector.add(index, _outcome(task, FrameStatus.CANCELLED, "batch cancelled"))
    if cancelled or queue:
        collector.report(None)
    return cancelled


def _result(future: Future[FrameOutcome], task: FrameTask) -> FrameOutcome:
    if future.cancelled():
        return _outcome(task, FrameStatus.CANCELLED, "batch cancelled")
    exc = future.exception()
    if exc is not None:
        return _outcome(task, FrameStatus.FAILED, f"worker error: {type(exc).__name__}: {exc}")
    return future.result()


def _existing(task: FrameTask) -> FrameOutcome:
    """Skip a finished output; report one that is not (never overwritten unless asked)."""
    problem = existing_output_problem(Path(task.output))
    if problem is None:
        return _outcome(task, FrameStatus.SKIPPED, "output exists")
    return _outcome(task, FrameStatus.FAILED, f"the output exists but {problem}; run again with "
                                              "overwrite to replace it")


def _outcome(task: FrameTask, status: FrameStatus, reason: str, seconds: float = 0.0,
             quality: dict[str, float | int] | None = None) -> FrameOutcome:
    return FrameOutcome(light=task.light, output=task.output, status=status, reason=reason,
                        seconds=seconds, quality=quality)


# --- the worker ----------------------------------------------------------------------------------


def calibrate_frame(task: FrameTask) -> FrameOutcome:
    """Calibrate one light and write its output; never raises for a bad file (``failed``)."""
    started = time.perf_counter()
    try:
        if not task.overwrite and os.path.lexists(task.output):
            return _existing(task)
        refs = [r for r in (task.bias, task.dark, task.flat) if r is not None]
        for ref in refs:
            _check_unchanged(ref)
        light = read_light(Path(task.light), buffer=getattr(_scratch, "light", None))
        _scratch.light = light.data.reshape(-1)
        terms = _terms(task.bias, task.dark, task.flat, task.light_exposure_s)
        _check_shape(light.data.shape, terms.shape)
        out = _output_buffer(terms.shape)
        if light.data.dtype == np.dtype(">i2"):
            calibrate_fits16(light.data, terms, bzero=light.zero, out=out)
        else:
            calibrate(light.data, terms, out=out)
        quality = quality_figures(out)
        provenance = Provenance(
            masters=tuple(MasterUse(kind=r.kind.value, name=r.name, checksum=r.checksum)
                          for r in refs),
            steps=(*terms.steps, *task.notes), quality=quality,
            dark_scale=terms.dark_scale if task.dark is not None else None,
            flat_median=terms.flat_median, bad_flat_pixels=terms.bad_flat_pixels,
            software=task.software)
        header = calibrated_header(light.header, terms.shape, provenance)
        write_calibrated(Path(task.output), out, header, overwrite=task.overwrite,
                         source=Path(task.light))
    except FileExistsError:
        return _existing(task)
    except LibraryError as exc:
        return _outcome(task, FrameStatus.FAILED, exc.message, time.perf_counter() - started)
    except (OSError, ValueError, MemoryError) as exc:
        return _outcome(task, FrameStatus.FAILED, f"{type(exc).__name__}: {exc}",
                        time.perf_counter() - started)
    return _outcome(task, FrameStatus.DONE, "", time.perf_counter() - started,
                    quality.to_json())


def clear_worker_cache() -> None:
    """Drop this process's cached master terms and the calling thread's scratch buffers."""
    _terms.cache_clear()
    _scratch.__dict__.clear()


_scratch = threading.local()
"""Per-thread scratch: ``light`` (the last light's stored values) and ``out`` (the last output),
reused by the next frame of the same thread when the size matches. A fresh 32 + 64 MiB pair costs
~12 ms of page faults per 4096² light, a quarter of the whole calibration. Per thread, so two
frames never share one (a dask worker runs tasks in threads)."""


def _output_buffer(shape: tuple[int, int]) -> np.ndarray:
    out = getattr(_scratch, "out", None)
    if out is None or out.shape != shape:
        out = _scratch.out = np.empty(shape, ">f4")
    return out


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
