"""Calibrating a batch of lights: plan (which masters for which light), then run on an Executor.

:func:`plan_batch` reads each light's header, matches it against the library
(:mod:`.matching`) and records, per light, either a picklable :class:`FrameTask` or the reason
none can be made. :func:`run_batch` submits one task per light to a
:class:`concurrent.futures.Executor` and collects one :class:`FrameOutcome` per light: ``done``,
``skipped`` (the output exists; ``overwrite`` replaces it), ``failed`` (with the reason; the batch
goes on) or ``cancelled``. A dry run (``dry_run=True``) submits nothing and writes nothing: each
light is reported ``planned`` or ``skipped``.

**Workers.** Each task runs :func:`~phdserver.pipeline.calibration_worker.calibrate_frame`
(re-exported here), a module-level function of one picklable argument, so any Executor can run
it: a :class:`~concurrent.futures.ProcessPoolExecutor` (the default, with the ``spawn`` start
method because the daemon is multi-threaded), a thread pool, or a dask cluster. Workers cache
the master terms per master set (:mod:`.calibration_worker` says how), so tasks are submitted
grouped by master set.

**On a dask cluster** (``pip install distributed``; not a phdserver dependency)::

    from distributed import Client
    from phdserver.pipeline.calibration_batch import plan_with_library, run_batch
    from phdserver.library.masters_db import MasterRecord, MastersDB

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

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from phdserver.errors import LibraryError
from phdserver.library.fits_headers import (
    FITS_SUFFIXES,
    FrameMetadata,
    FrameType,
    metadata_from_header,
)
from phdserver.library.masters_db import MasterRecord, MastersDB
from phdserver.library.matching import AmbiguousMatch, MatchPolicy, MatchResult, match_masters
from phdserver.pipeline.calibration_io import (
    DEFAULT_SUFFIX,
    output_path_for,
    read_light_header,
)
from phdserver.pipeline.calibration_worker import (
    FrameOutcome,
    FrameStatus,
    FrameTask,
    MasterRef,
    calibrate_frame,
    clear_worker_cache,
    existing_output_outcome,
)

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
            outcomes[index] = existing_output_outcome(frame.task)
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
                    collector.add(left_index, FrameOutcome.for_task(
                        left_task, FrameStatus.FAILED, f"not submitted: {exc}"))
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
        collector.add(index, FrameOutcome.for_task(task, FrameStatus.CANCELLED,
                                                   "batch cancelled"))
    if cancelled or queue:
        collector.report(None)
    return cancelled


def _result(future: Future[FrameOutcome], task: FrameTask) -> FrameOutcome:
    if future.cancelled():
        return FrameOutcome.for_task(task, FrameStatus.CANCELLED, "batch cancelled")
    exc = future.exception()
    if exc is not None:
        return FrameOutcome.for_task(task, FrameStatus.FAILED,
                                     f"worker error: {type(exc).__name__}: {exc}")
    return future.result()
