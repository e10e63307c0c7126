"""INDI: end-to-end overhead of an exposure, and trio loop stalls while big frames arrive.

Everything runs against Debian's ``indiserver`` + ``indi_simulator_ccd``, started here. As root
the server runs in a private network namespace (``unshare --net``; see
``tests/indi/drivers/indiserver.py``); otherwise it listens on a random high port of the host
for the duration, and the section says so.

* Overhead: wall time of ``IndiCamera.capture(1000)`` (send → uint16 array) minus the 1 s
  exposure, split at the moment the BLOB has been received and base64-decoded (driver + transfer)
  versus FITS decode in a worker thread.
* Stalls: while 4096² and 8192² frames (``SIM_XRES``/``SIM_YRES``; indiserver ``-m 1024``) are
  received and decoded, a heartbeat task sleeping 2 ms at a time records how late it wakes, and a
  ``trio.abc.Instrument`` records the longest single task step.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import trio

from phdserver.cameras.base import FrameType
from phdserver.cameras.indi import IndiCamera, IndiSettings
from phdserver.cameras.indi._client import ClientEvent
from phdserver.cameras.indi._xml import SetVector
from tests.indi.drivers.indiserver import (
    HostNetwork,
    IndiServer,
    NetnsUnavailable,
    PrivateNetwork,
    missing_tools,
)

SIM = "CCD Simulator"
STALL_BAR_S = 0.050
"""SPEC §8: the trio loop never stalls more than 50 ms."""


class StepTimer(trio.abc.Instrument):
    """The longest single task step (time between ``before_task_step`` and ``after``)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.task = ""
        self._start: float | None = None  # None until a whole step has been seen

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._start = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._start is None:
            return
        step = time.perf_counter() - self._start
        if step > self.worst:
            self.worst, self.task = step, task.name.rsplit(".", 1)[-1]


@dataclass
class Stall:
    size: int
    seconds: float
    blob_at: float
    worst_late: float
    worst_step: float
    step_task: str
    peak_rss_mb: float | None


async def _heartbeat(late: list[float], period: float = 0.002) -> None:
    while True:
        start = time.perf_counter()
        await trio.sleep(period)
        late.append(time.perf_counter() - start - period)


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_mb() -> float | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def _host_port() -> int:
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def _camera(
    net: PrivateNetwork | HostNetwork, port: int, tmp: Path, size: int | None = None
) -> AsyncIterator[IndiCamera]:
    server = IndiServer(net, ["indi_simulator_ccd"], port=port, home=tmp / f"home-{port}",
                        log_path=tmp / f"indiserver-{port}.log", max_queue_mb=1024)
    await trio.to_thread.run_sync(lambda: server.start(device=SIM))
    camera = IndiCamera(IndiSettings(device=SIM, host="127.0.0.1", port=port, timeout_s=60),
                        open_stream=net.open_stream)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(camera.run)
            if size is not None:
                client = camera.client
                await client.wait_link(timeout_s=10)
                await client.wait_property(SIM, "SIMULATOR_SETTINGS", timeout_s=10)
                await client.send_new_number(SIM, "SIMULATOR_SETTINGS",
                                             {"SIM_XRES": size, "SIM_YRES": size})
                await client.wait_property(
                    SIM, "SIMULATOR_SETTINGS", lambda p: p.number("SIM_XRES") == size,
                    timeout_s=10,
                )
            await camera.connect()
            yield camera
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(server.stop)


def _blob_clock(camera: IndiCamera) -> tuple[list[float], object]:
    arrivals: list[float] = []

    def listener(event: ClientEvent) -> None:
        if isinstance(event, SetVector) and event.kind == "BLOB":
            arrivals.append(time.perf_counter())

    return arrivals, camera.client.add_listener(listener)


async def _overheads(camera: IndiCamera, repeats: int) -> tuple[list[float], list[float]]:
    arrivals, remove = _blob_clock(camera)
    await camera.capture(1000, frame_type=FrameType.DARK)  # warm-up (imports, first frame)
    transfer, decode = [], []
    for _ in range(repeats):
        arrivals.clear()
        start = time.perf_counter()
        await camera.capture(1000, frame_type=FrameType.DARK)
        end = time.perf_counter()
        transfer.append(arrivals[-1] - start - 1.0)
        decode.append(end - arrivals[-1])
    remove()  # type: ignore[operator]
    return transfer, decode


async def _stall(camera: IndiCamera, size: int) -> Stall:
    arrivals, remove = _blob_clock(camera)
    late: list[float] = []
    timer = StepTimer()
    measured = _reset_peak_rss()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_heartbeat, late)
        trio.lowlevel.add_instrument(timer)
        start = time.perf_counter()
        try:
            frame = await camera.capture(1000, frame_type=FrameType.DARK)
        finally:
            trio.lowlevel.remove_instrument(timer)
        seconds = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    remove()  # type: ignore[operator]
    assert frame.data.shape == (size, size)
    return Stall(size=size, seconds=seconds, blob_at=arrivals[-1] - start, worst_late=max(late),
                 worst_step=timer.worst, step_task=timer.task,
                 peak_rss_mb=_peak_rss_mb() if measured else None)


async def _main(quick: bool) -> str:
    try:
        net: PrivateNetwork | HostNetwork = PrivateNetwork.start()
        where = "in a private network namespace (`unshare --net`)"
        ports = iter(range(7624, 7700))
    except NetnsUnavailable as exc:
        net = HostNetwork()
        where = f"on random high ports of the host, no namespace ({exc})"
        ports = iter(_host_port() for _ in range(100))
    repeats = 3 if quick else 8
    sizes = [4096] if quick else [4096, 8192]
    stalls: list[Stall] = []
    with tempfile.TemporaryDirectory(prefix="bench-indi-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            async with _camera(net, next(ports), tmp) as camera:
                transfer, decode = await _overheads(camera, repeats)
            for size in sizes:
                async with _camera(net, next(ports), tmp, size) as camera:
                    stalls.append(await _stall(camera, size))
        finally:
            net.close()
    return _report(quick, where, transfer, decode, stalls)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _report(quick: bool, where: str, transfer: list[float], decode: list[float],
            stalls: list[Stall]) -> str:
    total = [t + d for t, d in zip(transfer, decode, strict=True)]
    lines = [
        "## INDI: exposure overhead and loop stalls",
        "",
        f"Debian's indiserver + indi_simulator_ccd, started by the benchmark {where}; "
        f"{'quick' if quick else 'full'} mode; load average {os.getloadavg()[0]:.1f} at the end "
        "(heartbeat lateness includes OS scheduling delays). Command: "
        "`python -m benchmarks --only bench_indi`.",
        "",
        f"### 1 s dark, 1280×1024 uint16, {len(total)} runs after a warm-up",
        "",
        "| part | median | min | max |",
        "|---|---|---|---|",
    ]
    for label, values in (("overhead: send → numpy array, minus 1 s", total),
                          ("driver + transfer (send → BLOB decoded from base64, minus 1 s)",
                           transfer),
                          ("FITS decode in a worker thread → Frame", decode)):
        lines.append(f"| {label} | {_ms(statistics.median(values))} | {_ms(min(values))} | "
                     f"{_ms(max(values))} |")
    lines += [
        "",
        "Reference (reference/indi.md §4, same machine): `indi_setprop` → FITS written by "
        "`indi_getprop` took 1.01–1.17 s for a 1 s exposure; the three Python clients tried "
        "there took 1.04–1.15 s from newNumberVector to BLOB received.",
        "",
        "### Loop stalls while big frames arrive (1 s dark each)",
        "",
        "| frame | FITS size | send → array | BLOB received at | worst heartbeat lateness "
        "| longest task step | peak RSS | stall bar ≤ 50 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in stalls:
        worst = max(s.worst_late, s.worst_step)
        rss = f"{s.peak_rss_mb:.0f} MB" if s.peak_rss_mb is not None else "n/a"
        lines.append(
            f"| {s.size}×{s.size} | {s.size * s.size * 2 / 1e6:.0f} MB | {s.seconds:.2f} s | "
            f"{s.blob_at:.2f} s | {_ms(s.worst_late)} | {_ms(s.worst_step)} ({s.step_task}) | "
            f"{rss} | **{'pass' if worst <= STALL_BAR_S else 'FAIL'}** |"
        )
    lines += [
        "",
        "Reference (reference/indi.md §5, 134 MB frame): the prototype trio client that decoded "
        "base64 in one piece stalled the loop 0.66–1.0 s; indipyclient 0.90 s; pyindi-client "
        "0.47 s; a streaming decode's worst step was 0.11 s. Peak RSS there: raw trio client "
        "543 MB, indipyclient 641 MB, pyindi-client 636 MB. Our peak RSS is the benchmark "
        "process's high-water mark during that capture (reset before it via "
        "`/proc/self/clear_refs`).",
    ]
    return "\n".join(lines)


def run(quick: bool = False) -> str:
    """Run the INDI benchmark and return its Markdown section."""
    missing = missing_tools("indi_simulator_ccd")
    if missing:
        return (
            "## INDI: exposure overhead and loop stalls\n\n"
            f"Not run: {', '.join(missing)} missing (`apt-get install indi-bin iproute2 "
            "util-linux`)."
        )
    return trio.run(_main, quick)


if __name__ == "__main__":
    print(run(quick=bool(os.environ.get("QUICK"))))
