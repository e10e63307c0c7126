"""Event-loop benchmark: how long the trio loop stalls while a 4096×4096 build runs.

``run(quick)`` returns a Markdown section for ``docs/performance.md``. The App runs in-process
under trio, started with ``App.serve`` on port 0 exactly as the daemon starts (so start-up work
such as numba's warm-up is included), in a freshly spawned interpreter so that its heap holds what
the daemon's holds and not whatever the benchmark runner imported before (a bigger heap makes
garbage collection pauses longer). Three probes watch the loop:

* a :class:`trio.abc.Instrument` that times every task step (``before_task_step`` to
  ``after_task_step``, wall clock) and remembers the longest, with the task's name and the
  source lines where the step began and ended (where the coroutine was suspended before and
  after it);
* a heartbeat task that sleeps 5 ms in a loop and records how late each wake-up is. This also
  catches stalls outside task steps: a worker thread that holds the GIL, both cores busy, or the
  loop's own bookkeeping;
* a ``gc.callbacks`` hook timing every full (generation 2) collection. A collection runs on
  whichever thread allocates when the threshold is crossed, a worker thread too, and holds the
  GIL throughout, so the loop stalls for its whole length either way.

Meanwhile a task dispatches 1,000 status requests a second straight to the dispatcher (what 100
clients polling every 100 ms send, without the sockets), because a loop that serves requests
allocates, and allocation is what triggers collections. SPEC §8's bar: the loop never stalls
more than 50 ms. Builds are a dark library (2 exposures × 5 frames, time_scale 0.01) and a
defect map (5 frames, PHD2's 31×31 median), both 4096×4096.
"""

from __future__ import annotations

import collections
import gc
import logging
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import structlog
import trio

from phdserver.app import App
from phdserver.rpc import decode_line
from tests.support import make_config

from ._client import machine_busy_seconds, own_cpu_seconds, percentile

SIZE = 4096
HEARTBEAT_S = 0.005
BAR_MS = 50.0
SAMPLE_LATE_S = 0.010
"""A heartbeat this late samples what the worker threads are running."""
POLLS_PER_S = 1000
POLL_LINES = (b'{"method":"get_dark_library_status","id":1}',
              b'{"method":"get_app_state","id":2}')
BUILD_TIMEOUT_S = 300.0
BUILDS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("dark library, 2 exposures × 5 frames", "start_dark_library_build",
     {"exposures": [1000, 2000], "frame_count": 5}),
    ("defect map, 5 frames, 31×31 median", "start_defect_map_build",
     {"exposure_time": 1000, "frame_count": 5}),
)


def _where(task: trio.lowlevel.Task) -> str:
    """The innermost source line outside trio at which a task's coroutine chain is suspended
    (trio's own frames, its traps and ``to_thread`` plumbing, say nothing about who stalled)."""
    here = "?"
    awaitable: Any = task.coro
    while awaitable is not None:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None:
            break
        path = Path(frame.f_code.co_filename)
        if "trio" not in path.parts:
            here = f"{path.parent.name}/{path.name}:{frame.f_lineno} ({frame.f_code.co_name})"
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return here


@dataclass(frozen=True, slots=True, kw_only=True)
class LongStep:
    """One task step: how long it took, which task ran, where it resumed and where it stopped."""

    seconds: float
    task: str
    began: str
    ended: str


@dataclass(slots=True, eq=False)  # trio keeps instruments in a set: hash by identity
class StepTimer(trio.abc.Instrument):
    """Times task steps while ``active``; keeps the longest and every step over the bar."""

    active: bool = False
    worst: LongStep | None = None
    over_bar: list[LongStep] = field(default_factory=list)
    _started: float = 0.0
    _suspended_at: dict[trio.lowlevel.Task, str] = field(default_factory=dict)

    def reset(self) -> None:
        self.worst = None
        self.over_bar = []

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        took = time.perf_counter() - self._started
        ended = _where(task)
        began = self._suspended_at.get(task, "start")
        self._suspended_at[task] = ended
        if not self.active:
            return
        if self.worst is None or took > self.worst.seconds:
            self.worst = LongStep(seconds=took, task=task.name, began=began, ended=ended)
        if took * 1000 > BAR_MS:
            self.over_bar.append(LongStep(seconds=took, task=task.name, began=began, ended=ended))

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self._suspended_at.pop(task, None)


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildRun:
    name: str
    seconds: float
    worst_step: LongStep
    over_bar: list[LongStep]
    worst_late_ms: float
    p99_late_ms: float
    beats: int
    others_percent: float
    late_samples: collections.Counter[str]
    worst_gc_ms: float
    full_collections: int


async def _rpc(app: App, method: str, params: Any = None) -> Any:
    reply = orjson.loads(await app.dispatcher.run(
        decode_line(orjson.dumps({"method": method, "params": params, "id": 1}))))
    if "error" in reply:
        raise RuntimeError(f"{method} failed: {reply['error']}")
    return reply["result"]


def _worker_locations(loop_thread: int) -> list[str]:
    """Where each other thread is right now: its innermost frame in phdserver (or numpy's
    caller), which is where a thread holding the GIL, or the CPU, spends its time."""
    out = []
    for ident, frame in sys._current_frames().items():
        if ident == loop_thread:
            continue
        here = None
        walk: Any = frame
        while walk is not None:
            path = Path(walk.f_code.co_filename)
            if "phdserver" in path.parts:
                here = f"{path.parent.name}/{path.name}:{walk.f_lineno} ({walk.f_code.co_name})"
                break
            walk = walk.f_back
        if here is not None:
            out.append(here)
    return out


async def _heartbeat(lateness: list[float], samples: collections.Counter[str]) -> None:
    clock = time.perf_counter
    loop_thread = threading.get_ident()
    while True:
        started = clock()
        await trio.sleep(HEARTBEAT_S)
        late = clock() - started - HEARTBEAT_S
        lateness.append(late)
        if late > SAMPLE_LATE_S:
            samples.update(_worker_locations(loop_thread))


@dataclass(slots=True, eq=False)
class GcTimer:
    """Times full (generation 2) collections while ``active``."""

    active: bool = False
    worst: float = 0.0
    count: int = 0
    _started: float = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        elif self.active:
            self.worst = max(self.worst, time.perf_counter() - self._started)
            self.count += 1


async def _poll_load(app: App) -> None:
    """Dispatch status requests at POLLS_PER_S, as many polling clients would send them."""
    dispatcher = app.dispatcher
    requests = [decode_line(line) for line in POLL_LINES]
    period = 1 / POLLS_PER_S
    due = time.perf_counter()
    sent = 0
    while True:
        due += period
        delay = due - time.perf_counter()
        if delay < -10 * period:
            due -= delay  # fell behind (the loop stalled): carry on from now, no burst
        # Every request is a checkpoint, as each would arrive on its own wake-up.
        await trio.sleep(max(0.0, delay))
        reply = dispatcher.start(requests[sent % 2])
        if not isinstance(reply, bytes):
            raise TypeError(f"a status request did not complete at once: {reply!r}")
        sent += 1


async def _measure(app: App, timer: StepTimer, name: str, method: str,
                   params: dict[str, Any]) -> BuildRun:
    lateness: list[float] = []
    samples: collections.Counter[str] = collections.Counter()
    collections_timer = GcTimer(active=True)
    gc.callbacks.append(collections_timer)
    busy0, own0 = machine_busy_seconds(), own_cpu_seconds()
    async with trio.open_nursery() as nursery:
        timer.reset()
        timer.active = True
        nursery.start_soon(_heartbeat, lateness, samples)
        nursery.start_soon(_poll_load, app)
        started = time.perf_counter()
        op_id = (await _rpc(app, method, params))["operation_id"]
        with trio.fail_after(BUILD_TIMEOUT_S):
            final = await app.operations.wait_finished(op_id)
        seconds = time.perf_counter() - started
        timer.active = False
        collections_timer.active = False
        nursery.cancel_scope.cancel()
    gc.callbacks.remove(collections_timer)
    if final.status != "completed":
        raise RuntimeError(f"{method} ended {final.status}: {final.error}")
    assert timer.worst is not None
    return BuildRun(
        name=name, seconds=seconds, worst_step=timer.worst, over_bar=list(timer.over_bar),
        worst_late_ms=1000 * max(lateness),
        p99_late_ms=1000 * percentile(lateness, 99),
        beats=len(lateness),
        others_percent=max(0.0, 100 * ((machine_busy_seconds() - busy0)
                                       - (own_cpu_seconds() - own0)) / seconds),
        late_samples=samples,
        worst_gc_ms=1000 * collections_timer.worst,
        full_collections=collections_timer.count,
    )


async def _run_builds(data_dir: Path, runs: int) -> list[BuildRun]:
    quiet = structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    app = App(make_config(data_dir, width=SIZE, height=SIZE, time_scale=0.01), logger=quiet)
    timer = StepTimer()
    trio.lowlevel.add_instrument(timer)
    results: list[BuildRun] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(app.serve)  # port 0: the listener is up but nobody connects
            await _rpc(app, "set_connected", [True])
            for name, method, params in BUILDS:
                for _ in range(runs):
                    results.append(await _measure(app, timer, name, method, params))
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(timer)
    return results


def measure_builds(runs: int) -> list[BuildRun]:
    """Run the builds under the probes (meant for a fresh process; see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="phdserver-loop-") as tmp:
        return trio.run(_run_builds, Path(tmp), runs)


def _gc(runs: list[BuildRun]) -> str:
    count = sum(r.full_collections for r in runs)
    if not count:
        return "none ran"
    return f"{max(r.worst_gc_ms for r in runs):.1f} ({count} collections)"


def _step(step: LongStep) -> str:
    return (f"{1000 * step.seconds:.1f} ms in `{step.task.rsplit('.', 1)[-1]}`, "
            f"from {step.began} to {step.ended}")


def run(quick: bool) -> str:
    runs = 1 if quick else 2
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = pool.submit(measure_builds, runs).result()
    rows = ["| build | time (s) | longest task step (ms) | heartbeat lateness: worst / p99 (ms) "
            "| wake-ups | longest full GC (ms) | other processes' CPU | bar (50 ms) |",
            "|---|---|---|---|---|---|---|---|"]
    notes: list[str] = []
    for name, _, _ in BUILDS:
        mine = [r for r in results if r.name == name]
        worst = max(mine, key=lambda r: r.worst_step.seconds).worst_step
        late = max(r.worst_late_ms for r in mine)
        passed = max(1000 * worst.seconds, late) <= BAR_MS
        rows.append(
            f"| {name} | {statistics.median(r.seconds for r in mine):.1f} "
            f"| {1000 * worst.seconds:.1f} | {late:.1f} / "
            f"{statistics.median(r.p99_late_ms for r in mine):.2f} "
            f"| {sum(r.beats for r in mine)} "
            f"| {_gc(mine)} "
            f"| {max(r.others_percent for r in mine):.0f}% of a core "
            f"| {'PASS' if passed else '**FAIL**'} |"
        )
        notes.append(f"- {name}: longest step {_step(worst)}.")
        stalls = sorted((s for r in mine for s in r.over_bar), key=lambda s: -s.seconds)
        notes += [f"  - over the bar: {_step(s)}" for s in stalls[:5]]
        samples: collections.Counter[str] = collections.Counter()
        for r in mine:
            samples.update(r.late_samples)
        gc_ms = max(r.worst_gc_ms for r in mine)
        if gc_ms > BAR_MS:
            notes.append(f"  - a full garbage collection took {gc_ms:.1f} ms: it holds the GIL "
                         "throughout, so the loop stalls that long whichever thread ran it.")
        if samples:
            where = ", ".join(f"`{loc}` ×{n}" for loc, n in samples.most_common(3))
            notes.append(f"  - worker threads seen when the heartbeat woke over "
                         f"{1000 * SAMPLE_LATE_S:.0f} ms late: {where}")
    return "\n".join([
        "## Event loop: stalls during a 4096×4096 build",
        "",
        "The App runs in-process under trio, started by `App.serve` (port 0) in a freshly "
        "spawned interpreter; an instrument times every task step, a heartbeat task sleeps 5 ms "
        "in a loop and records how late it wakes (which also catches worker threads holding the "
        "GIL or both cores), and a `gc.callbacks` hook times full collections, while "
        f"{POLLS_PER_S:,} status requests a second are dispatched in-process (the load of 100 "
        f"clients polling every 100 ms). Builds run with the simulator at {SIZE}×{SIZE}, "
        f"time_scale 0.01; {runs} run(s) each: worst step, lateness and collection over the "
        "runs, p99 lateness the median over runs. \"Other processes' CPU\" is what the rest of "
        "the machine used meanwhile (the worst run); on 2 cores, anything much above 0 "
        "inflates lateness.",
        "",
        *rows,
        "",
        *notes,
    ])
