"""Calibrate a batch of lights against the master library: the daemon's operation, and the
synchronous steps the standalone CLI shares with it (listing, importing, matching and removing
masters; planning and running a batch), so that both give the same answers. The synchronous
functions block (SQLite, FITS headers, checksums): the daemon calls them in ``trio.to_thread``,
and each opens its own SQLite connection in the thread that calls it.

Stages: ``starting`` → ``matching_masters`` (read each light's header, verify the masters'
files, match; in a worker thread) → ``calibrating`` (:func:`~phdserver.library.run_batch` in a
worker thread, frames on an Executor) → ``completed``.

**Executor.** ``workers`` (default: the CPU count), capped at the number of lights to write.
More than one: a ``ProcessPoolExecutor`` (``spawn``; its workers ignore SIGINT, so a Ctrl-C
on a terminal stops the batch through its cancel event instead of killing frames mid-write).
Exactly one: a single worker *thread* of the calling process, because one process buys no
parallelism over a thread and costs 1-3 s of start-up (importing numpy, astropy and numba) per
batch; the kernel releases the GIL, and the master terms it caches are dropped when the batch
ends, so the daemon keeps no 2 × 128 MiB behind.

**Cancellation** (:func:`run_light_calibration`). Threads cannot be interrupted, so the batch
runs with ``abandon_on_cancel=False`` while a sibling task waits for the operation's scope to
be cancelled and then sets the batch's ``threading.Event``: nothing more is submitted, queued
frames are dropped, frames being written finish (outputs are atomic), and the batch returns
within about a second (its poll interval plus one frame). Outputs already written stay; the
operation ends ``cancelled`` with its counts in ``details``. A daemon shutdown cancels it the
same way.

**Outcome.** ``completed`` when at least one light was calibrated or skipped (its output
exists); frames that failed are counted and listed (the first :data:`MAX_LISTED_FAILURES`)
in ``details.failures``. ``failed`` when every light failed: nothing useful came of the batch,
so the client should hear it from the status, not only from a counter.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from phdserver.errors import LibraryError
from phdserver.library.fits_headers import FrameType, metadata_from_header
from phdserver.library.masters_db import (
    DB_FILE_NAME,
    ImportOutcome,
    MasterRecord,
    MastersDB,
    UnknownMaster,
)
from phdserver.library.matching import MatchPolicy, match_masters
from phdserver.pipeline.calibration_batch import (
    BatchPlan,
    BatchProgress,
    BatchReport,
    FrameStatus,
    clear_worker_cache,
    find_lights,
    plan_batch,
    plan_with_library,
    run_batch,
)
from phdserver.pipeline.calibration_io import read_light_header

from .registry import OperationHandle

__all__ = [
    "MAX_LISTED_FAILURES",
    "LightCalibrationRequest",
    "NotALight",
    "batch_executor",
    "calibrate_planned",
    "dry_run_summary",
    "expand_inputs",
    "final_counts",
    "import_masters",
    "list_masters",
    "match_light",
    "plan_light_calibration",
    "progress_details",
    "progress_message",
    "remove_master",
    "run_light_calibration",
]

MAX_LISTED_FAILURES = 100
PLAN_SHARE = 5.0
"""Percent of the progress bar that matching takes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LightCalibrationRequest:
    """One batch: the lights (files, already expanded), where outputs go, and the policy."""

    lights: tuple[Path, ...]
    output_dir: Path | None
    suffix: str
    overwrite: bool
    policy: MatchPolicy
    workers: int | None
    """None: the CPU count. Capped at the number of lights to write."""


def expand_inputs(inputs: Sequence[Path], suffix: str) -> list[Path]:
    """Files as given and the FITS files of directories (not recursive, outputs named
    ``*<suffix>`` left out), each once, in the order given."""
    return list(dict.fromkeys(Path(p).absolute() for p in find_lights(inputs, suffix=suffix)))


def plan_light_calibration(data_dir: Path, request: LightCalibrationRequest, *,
                           refresh: bool = True) -> BatchPlan:
    """Match every light against the library of ``data_dir`` (blocking; run in a thread).

    A data directory without a library is planned against no masters, and no library file is
    created: ``refresh=False`` (a dry run) writes nothing at all.
    """
    options: dict[str, Any] = {"policy": request.policy, "output_dir": request.output_dir,
                               "suffix": request.suffix}
    if not _has_library(data_dir):
        return plan_batch(request.lights, [], **options)
    with MastersDB.in_data_dir(data_dir) as db:
        return plan_with_library(db, request.lights, refresh=refresh, **options)


def _pending(plan: BatchPlan, overwrite: bool) -> int:
    """Lights that will be submitted: runnable, and their output absent unless overwriting."""
    return sum(1 for f in plan.frames
               if f.task is not None and (overwrite or not os.path.lexists(f.output)))


def batch_executor(workers: int | None, pending: int) -> tuple[Executor, int]:
    """The executor for ``pending`` lights, and how many tasks to keep submitted ahead.

    See the module docstring: one worker is a thread, more are spawned processes.
    """
    count = max(1, min(workers or os.cpu_count() or 1, pending))
    if count == 1:
        return ThreadPoolExecutor(1, thread_name_prefix="phdserver-calibrate"), 2
    pool = ProcessPoolExecutor(max_workers=count, mp_context=multiprocessing.get_context("spawn"),
                               initializer=signal.signal,
                               initargs=(signal.SIGINT, signal.SIG_IGN))
    return pool, 2 * count


def calibrate_planned(
    plan: BatchPlan,
    request: LightCalibrationRequest,
    *,
    progress_callback: Callable[[BatchProgress], None] | None = None,
    cancel_event: threading.Event | None = None,
) -> BatchReport:
    """Run a plan on the executor :func:`batch_executor` picks (blocking; run in a thread)."""
    pending = _pending(plan, request.overwrite)
    if pending == 0:  # every output exists or nothing is runnable: no executor at all
        return run_batch(plan, None, overwrite=request.overwrite,
                         progress_callback=progress_callback, cancel_event=cancel_event)
    executor, ahead = batch_executor(request.workers, pending)
    try:
        return run_batch(plan, executor, overwrite=request.overwrite,
                         progress_callback=progress_callback, cancel_event=cancel_event,
                         max_in_flight=ahead)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        if isinstance(executor, ThreadPoolExecutor):
            clear_worker_cache()


# --- the master library (blocking; SQLite connections opened in the calling thread) ---------


class NotALight(LibraryError):
    """The frame to match says it is something else (a dark, a flat...)."""


def _has_library(data_dir: Path) -> bool:
    return (Path(data_dir) / DB_FILE_NAME).exists()


def list_masters(data_dir: Path, frame_type: FrameType | None = None) -> list[dict[str, Any]]:
    """Every master (or those of one type) with the state of its file: ``status`` is ``ok``,
    ``missing`` (moved or deleted), ``changed`` or ``unreadable``, and ``status_message`` says
    what to do. A data directory without a library has no masters (and gets no file)."""
    if not _has_library(data_dir):
        return []
    with MastersDB.in_data_dir(data_dir) as db:
        ids = [r.id for r in db.list_masters(frame_type)]
        checks = db.verify(ids) if ids else []
    return [c.record.to_json() | {"status": c.status.value, "status_message": c.message}
            for c in checks]


def import_masters(data_dir: Path, paths: Sequence[Path], *, frame_type: FrameType | None,
                   recursive: bool) -> list[ImportOutcome]:
    """Import files and directories of masters (creating the library if needed)."""
    with MastersDB.in_data_dir(data_dir) as db:
        return db.import_paths(paths, frame_type=frame_type, recursive=recursive)


def remove_master(data_dir: Path, master_id: int) -> MasterRecord:
    """Forget one master (its file stays). Raises ``UnknownMaster``."""
    if not _has_library(data_dir):
        raise UnknownMaster(f"No calibration master has id {master_id}.")
    with MastersDB.in_data_dir(data_dir) as db:
        return db.remove(master_id)


def match_light(data_dir: Path, light: Path, policy: MatchPolicy) -> dict[str, Any]:
    """The masters chosen for one light and every rejected candidate with its reason.

    Raises
    ------
    NotALight
        The header says the frame is not a light.
    AmbiguousMatch
        Candidates tie on the ranking key (the message lists them).
    LibraryError
        The light cannot be read.
    """
    light = Path(light).absolute()
    meta = metadata_from_header(read_light_header(light), path=light)
    if meta.frame_type not in (None, FrameType.LIGHT):
        raise NotALight(f"{light.name} is a {meta.frame_type.value} frame, not a light")
    if _has_library(data_dir):
        with MastersDB.in_data_dir(data_dir) as db:
            checks = db.verify()
    else:
        checks = []
    unusable = {c.record.id: c.message for c in checks if not c.usable}
    match = match_masters(meta, [c.record for c in checks], policy, unusable=unusable)
    return {"light": str(light), "meta": meta.to_json(), **match.to_json(),
            "policy": policy.to_json()}


# --- reporting ----------------------------------------------------------------------------


def _eta_text(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "ETA unknown"
    whole = round(seconds)
    if whole >= 3600:
        return f"ETA {whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
    return f"ETA {whole // 60}:{whole % 60:02d}"


def progress_message(p: BatchProgress) -> str:
    """``"12 of 40 lights, ETA 0:35 (10 calibrated, 1 skipped, 1 failed)"``: the counts and the
    ETA first, so a 60-column progress line keeps them."""
    finished = p.done + p.skipped + p.failed
    parts = [f"{p.done} calibrated"]
    parts += [f"{n} {word}" for n, word in ((p.skipped, "skipped"), (p.failed, "failed"),
                                            (p.cancelled, "cancelled")) if n]
    return f"{finished} of {p.total} lights, {_eta_text(p.eta_s)} ({', '.join(parts)})"


def progress_details(p: BatchProgress) -> dict[str, Any]:
    """The operation details (and status members) a progress report sets."""
    return {"total": p.total, "done": p.done, "skipped": p.skipped, "failed": p.failed,
            "cancelled": p.cancelled, "current_file": p.current_file,
            "elapsed_s": round(p.elapsed_s, 3),
            "eta_s": None if p.eta_s is None else round(p.eta_s, 1)}


def _failures(plan: BatchPlan, report: BatchReport | None = None) -> list[dict[str, str]]:
    if report is None:
        failed = [(str(f.light), f.problem or "") for f in plan.frames if f.task is None]
    else:
        failed = [(o.light, o.reason) for o in report.outcomes if o.status is FrameStatus.FAILED]
    return [{"light": light, "reason": reason} for light, reason in failed[:MAX_LISTED_FAILURES]]


def final_counts(report: BatchReport) -> dict[str, Any]:
    """Counts, per-frame failures and timing of a finished (or cancelled) batch."""
    return {"total": len(report.outcomes), "done": report.count(FrameStatus.DONE),
            "skipped": report.count(FrameStatus.SKIPPED),
            "failed": report.count(FrameStatus.FAILED),
            "cancelled": report.count(FrameStatus.CANCELLED), "current_file": None,
            "eta_s": 0.0 if not report.cancelled else None,
            "elapsed_s": round(report.elapsed_s, 3)}


def dry_run_summary(plan: BatchPlan, report: BatchReport) -> dict[str, Any]:
    """What a dry run answers: each light, its output, its masters or why none fits, and
    what a real run would do with it (``planned``, ``skipped``: the output exists, or
    ``failed``: it cannot be calibrated)."""
    frames = []
    for frame, outcome in zip(plan.frames, report.outcomes, strict=True):
        entry = frame.to_json()
        entry.update(status=outcome.status.value, reason=outcome.reason)
        frames.append(entry)
    counts = {s.value: report.count(s) for s in (FrameStatus.PLANNED, FrameStatus.SKIPPED,
                                                  FrameStatus.FAILED)}
    return {"frames": frames, "counts": counts, "policy": plan.policy.to_json()}


# --- the operation ------------------------------------------------------------------------


async def run_light_calibration(handle: OperationHandle, data_dir: Path,
                                request: LightCalibrationRequest) -> dict[str, Any]:
    """The operation body; see the module docstring."""
    total = len(request.lights)
    handle.set_status("matching_masters",
                      f"Matching {total} light{'s' if total != 1 else ''} against the "
                      "master library", progress=0)
    plan = await trio.to_thread.run_sync(plan_light_calibration, data_dir, request)
    await trio.lowlevel.checkpoint_if_cancelled()  # a cancel while matching: stop here
    runnable = sum(1 for f in plan.frames if f.task is not None)
    handle.update(runnable=runnable, failures=_failures(plan))
    handle.set_status("calibrating", f"Calibrating {runnable} of {total} lights",
                      progress=PLAN_SHARE)

    def report(p: BatchProgress) -> None:  # in the trio thread
        finished = p.done + p.skipped + p.failed  # cancelled lights are not progress
        handle.update(progress=PLAN_SHARE + (100 - PLAN_SHARE) * finished / max(p.total, 1),
                      message=progress_message(p), **progress_details(p))

    def on_progress(p: BatchProgress) -> None:  # in the batch thread
        trio.from_thread.run_sync(report, p)

    cancel = threading.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_set_when_cancelled, cancel)
        outcome = await trio.to_thread.run_sync(
            lambda: calibrate_planned(plan, request, progress_callback=on_progress,
                                      cancel_event=cancel),
            abandon_on_cancel=False)
        nursery.cancel_scope.cancel()
        # Recorded before the nursery exits, which re-raises a cancel of the operation.
        details = final_counts(outcome) | {"failures": _failures(plan, outcome)}
        handle.update(**details)
    handle.log.info("light calibration finished", done=details["done"],
                    skipped=details["skipped"], failed=details["failed"])
    if details["failed"] and not (details["done"] or details["skipped"]):
        first = details["failures"][0]
        raise LibraryError(f"none of the {total} lights could be calibrated; the first, "
                           f"{Path(first['light']).name}: {first['reason']}")
    return details


async def _set_when_cancelled(event: threading.Event) -> None:
    """Set ``event`` when this task is cancelled: by the operation's cancel, or because the
    batch ended (then setting it is harmless)."""
    try:
        await trio.sleep_forever()
    finally:
        event.set()
