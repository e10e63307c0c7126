"""Protocol benchmark: the daemon's JSON-RPC throughput and latency beside real PHD2's.

``run(quick)`` returns a Markdown section for ``docs/performance.md``. The daemon runs as a
separate process (``phdserver serve`` on a free loopback port, temporary data directory, the
simulator connected and stopped, as PHD2 was), and the client reproduces the method PHD2 was
measured with on this machine (reference/phd2.md §7): a Python 3.11 client over 127.0.0.1
with ``TCP_NODELAY``, the request ``{"method":"get_app_state","id":N}\\r\\n``, the greeting
skipped before timing, the daemon's CPU read from /proc. Each test is repeated (3 runs in quick
mode, 6 in full, as PHD2's figures were) and shown as median (min-max); a bar passes when the
median meets it. The status-polling test runs a 4096×4096 build per run, so it has fewer runs
(1 quick, 3 full), and reports the worst poll in each stage of the build to show where the
slow ones were. The whole module takes about 20 s quick and 60 s full.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import selectors
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from ._client import (
    Daemon,
    LineSocket,
    OperationWatch,
    PollingClient,
    Spread,
    machine_busy_seconds,
    own_cpu_seconds,
    percentile,
    request_line,
    running_daemon,
)

PIPELINED_TOTAL = 20_000
PIPELINED_WRITES = 40
SEQUENTIAL_COUNT = 1_000
FAN_CONNECTIONS = 50
FAN_REQUESTS = 200
BURST_CLIENTS = 200
BURST_DEADLINE_S = 5.0
POLL_CLIENTS = 100
POLL_PERIOD_S = 0.1
BUILD_SIZE = "4096x4096"
IO_TIMEOUT_S = 60.0
IDLE_POLL_S = 3.0
"""How long the clients of test 5 poll a daemon with no build running (the floor)."""
WAKEUP_S = 5.0
BUILD_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """One run of one test: its figures by name, and CPU shares (% of one core) over it: the
    daemon's, and that of processes other than the daemon and this client."""

    figures: dict[str, float]
    cpu_percent: float
    others_percent: float


def _measured(daemon: Daemon, test: Callable[[], dict[str, float]]) -> Run:
    """Run ``test`` and charge it the daemon's utime+stime over the same wall time."""
    busy0, own0 = machine_busy_seconds(), own_cpu_seconds()
    cpu0, wall0 = daemon.cpu_seconds(), time.perf_counter()
    figures = test()
    cpu1, wall1 = daemon.cpu_seconds(), time.perf_counter()
    busy1, own1 = machine_busy_seconds(), own_cpu_seconds()
    wall = wall1 - wall0
    others = (busy1 - busy0) - (cpu1 - cpu0) - (own1 - own0)
    return Run(figures=figures, cpu_percent=100 * (cpu1 - cpu0) / wall,
               others_percent=max(0.0, 100 * others / wall))


# -- 1. pipelined ------------------------------------------------------------------------------
def _read_in_order(client: LineSocket, total: int) -> float:
    """Read ``total`` replies, checking each id follows the last; returns when the last came."""
    expected = 1
    pending = b""
    while expected <= total:
        chunk = client.sock.recv(1 << 20)
        if not chunk:
            raise EOFError("server closed the connection")
        lines = (pending + chunk).split(b"\r\n")
        pending = lines.pop()
        for line in lines:
            reply = orjson.loads(line)
            if reply.get("id") != expected or "result" not in reply:
                raise AssertionError(f"reply {expected} out of order: {line!r}")
            expected += 1
    return time.perf_counter()


def pipelined(port: int) -> dict[str, float]:
    """20,000 requests on one connection, 40 writes of 500 lines, a reader thread reading."""
    per_write = PIPELINED_TOTAL // PIPELINED_WRITES
    writes = [b"".join(request_line(i) for i in range(k * per_write + 1, (k + 1) * per_write + 1))
              for k in range(PIPELINED_WRITES)]
    client = LineSocket.connect(port, timeout=IO_TIMEOUT_S)
    finished: list[float] = []
    failure: list[BaseException] = []

    def reader() -> None:
        try:
            finished.append(_read_in_order(client, PIPELINED_TOTAL))
        except BaseException as exc:
            failure.append(exc)

    with client:
        thread = threading.Thread(target=reader, name="pipelined-reader")
        thread.start()
        started = time.perf_counter()
        for data in writes:
            client.sock.sendall(data)
        thread.join()
    if failure:
        raise failure[0]
    return {"rate": PIPELINED_TOTAL / (finished[0] - started)}


# -- 2. sequential -----------------------------------------------------------------------------
def sequential(port: int) -> dict[str, float]:
    """1,000 round trips on one connection, each waiting for its reply."""
    requests = [request_line(i) for i in range(1, SEQUENTIAL_COUNT + 1)]
    latencies: list[float] = []
    with LineSocket.connect(port, timeout=IO_TIMEOUT_S) as client:
        send, read = client.sock.sendall, client.read_line
        clock = time.perf_counter
        started = clock()
        for number, data in enumerate(requests, start=1):
            t0 = clock()
            send(data)
            line = read()
            latencies.append(clock() - t0)
            if not line.endswith(b'"id":%d}' % number):
                raise AssertionError(f"unexpected reply to {number}: {line!r}")
        elapsed = clock() - started
    return {"p50": 1000 * percentile(latencies, 50), "p99": 1000 * percentile(latencies, 99),
            "mean": 1000 * statistics.fmean(latencies), "rate": SEQUENTIAL_COUNT / elapsed}


# -- 3. many connections -----------------------------------------------------------------------
def fan_out(port: int) -> dict[str, float]:
    """50 connections × 200 sequential requests, one thread each, released together."""
    barrier = threading.Barrier(FAN_CONNECTIONS + 1)
    latencies: list[list[float]] = [[] for _ in range(FAN_CONNECTIONS)]
    ends: list[float] = [0.0] * FAN_CONNECTIONS
    failure: list[BaseException] = []

    def client_thread(index: int) -> None:
        try:
            with LineSocket.connect(port, timeout=IO_TIMEOUT_S) as client:
                send, read, clock = client.sock.sendall, client.read_line, time.perf_counter
                mine = latencies[index]
                barrier.wait()
                for number in range(1, FAN_REQUESTS + 1):
                    t0 = clock()
                    send(request_line(number))
                    read()
                    mine.append(clock() - t0)
                ends[index] = clock()
        except BaseException as exc:
            failure.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=client_thread, args=(i,), name=f"fan-{i}")
               for i in range(FAN_CONNECTIONS)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    if failure:
        raise failure[0]
    every = [x for per_client in latencies for x in per_client]
    return {"rate": len(every) / (max(ends) - started), "p50": 1000 * percentile(every, 50),
            "p99": 1000 * percentile(every, 99), "max": 1000 * max(every)}


def fan_out_selector(port: int) -> dict[str, float]:
    """The same 50 × 200, all connections driven by one selector thread.

    Each connection sends its next request the moment its reply is read, but one thread
    serves all 50, so requests reach the daemon in bursts of many connections at once and
    the daemon does less work per request than with PHD2's client pattern (a thread per
    connection, :func:`fan_out`). Shown beside it, never as the bar.
    """
    clients = [LineSocket.connect(port, timeout=IO_TIMEOUT_S) for _ in range(FAN_CONNECTIONS)]
    latencies: list[float] = []
    try:
        pollers = [PollingClient(client, i, methods=("get_app_state",))
                   for i, client in enumerate(clients)]
        selector = selectors.DefaultSelector()
        for poller in pollers:
            selector.register(poller.sock, selectors.EVENT_READ, poller)
        clock = time.perf_counter
        started = clock()
        for poller in pollers:
            poller.send()
        running = len(pollers)
        while running:
            ready = selector.select(IO_TIMEOUT_S)
            if not ready:
                raise TimeoutError(f"no reply in {IO_TIMEOUT_S} s")
            for key, _ in ready:
                poller = key.data
                if not poller.replied():
                    continue
                latencies.append(clock() - poller.sent_at)
                if poller.number < FAN_REQUESTS:
                    poller.send()
                else:
                    selector.unregister(poller.sock)
                    running -= 1
        ended = clock()
        selector.close()
    finally:
        for client in clients:
            client.close()
    return {"rate": len(latencies) / (ended - started), "p50": 1000 * percentile(latencies, 50),
            "p99": 1000 * percentile(latencies, 99), "max": 1000 * max(latencies)}


# -- 4. connection burst -----------------------------------------------------------------------
def burst(port: int) -> dict[str, float]:
    """200 clients connect at the same instant; count those fully greeted within 5 s."""
    barrier = threading.Barrier(BURST_CLIENTS + 1)
    greeted: list[float] = []
    release: list[float] = []
    sockets: list[LineSocket] = []
    lock = threading.Lock()

    def client_thread() -> None:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        try:
            client = LineSocket.connect(port, timeout=BURST_DEADLINE_S, skip_greeting=False)
        except OSError:
            return
        with lock:
            sockets.append(client)
        try:
            names = client.read_greeting()
        except (OSError, EOFError, ValueError):
            return
        took = time.perf_counter() - release[0]
        if names[:1] == ["Version"] and names[-1] == "AppState" and took <= BURST_DEADLINE_S:
            with lock:
                greeted.append(took)

    threads = [threading.Thread(target=client_thread, name=f"burst-{i}")
               for i in range(BURST_CLIENTS)]
    for thread in threads:
        thread.start()
    release.append(time.perf_counter())
    barrier.wait()
    for thread in threads:
        thread.join()
    for client in sockets:
        client.close()
    return {"greeted": float(len(greeted)),
            "slowest": 1000 * max(greeted) if greeted else float("nan")}


# -- 5. polling during a build -----------------------------------------------------------------
def polling_during_build(port: int, method: str | None,
                         params: dict[str, object] | None = None) -> dict[str, float]:
    """100 clients poll status every ~100 ms while one 4096² build runs in the daemon.

    One thread drives every client through a selector, so the client's own cost per poll stays
    in microseconds and the round trips measure the daemon, not a hundred client threads
    fighting over the client's GIL. With ``method`` None no build runs and the clients poll for
    :data:`IDLE_POLL_S`: the floor that the same load meets on this machine with nothing else
    to do.
    """
    clients = [LineSocket.connect(port, timeout=IO_TIMEOUT_S) for _ in range(POLL_CLIENTS)]
    control = LineSocket.connect(port, timeout=IO_TIMEOUT_S)
    samples: list[tuple[float, float]] = []
    try:
        pollers = [PollingClient(client, i) for i, client in enumerate(clients)]
        selector = selectors.DefaultSelector()
        for poller in pollers:
            selector.register(poller.sock, selectors.EVENT_READ, poller)
        control.sock.setblocking(False)
        selector.register(control.sock, selectors.EVENT_READ, None)
        started = time.perf_counter()
        due = [(started + POLL_PERIOD_S * i / POLL_CLIENTS, i) for i in range(POLL_CLIENTS)]
        watch: OperationWatch | None = None
        if method is not None:
            control.sock.send(request_line(1, method, params or {}))
            watch = OperationWatch(method, control.take_buffered())
        deadline = started + (BUILD_TIMEOUT_S if watch is not None else IDLE_POLL_S)
        while watch is None or watch.status is None:
            now = time.perf_counter()
            if now > deadline:
                if watch is None:
                    break
                raise TimeoutError(f"{method} did not finish in {BUILD_TIMEOUT_S} s")
            while due and due[0][0] <= now:
                pollers[heapq.heappop(due)[1]].send()
            timeout = max(0.0, due[0][0] - time.perf_counter()) if due else POLL_PERIOD_S
            for key, _ in selector.select(timeout):
                poller = key.data
                if poller is None:
                    if watch is not None:
                        watch.feed(control.sock.recv(65536))
                elif poller.replied():
                    samples.append((poller.sent_at, time.perf_counter() - poller.sent_at))
                    heapq.heappush(due, (poller.sent_at + POLL_PERIOD_S, poller.index))
        ended = time.perf_counter()
        selector.close()
    finally:
        for client in [*clients, control]:
            client.close()
    if watch is not None and watch.status != "completed":
        raise RuntimeError(f"{method} ended {watch.status}")
    during = [rtt for t0, rtt in samples if started <= t0 <= ended]
    figures = {"p99": 1000 * percentile(during, 99), "max": 1000 * max(during),
               "polls": float(len(during)), "build_s": ended - started}
    if watch is None:
        return figures
    # Where the slow polls were: the worst round trip within each stage of the build.
    times = [when for when, _ in watch.stages]
    for t0, rtt in samples:
        stage = watch.stages[max(0, bisect.bisect_right(times, t0) - 1)][1]
        key = f"stage max {stage}"
        figures[key] = max(figures.get(key, 0.0), 1000 * rtt)
    return figures


def wakeup_lateness(seconds: float) -> dict[str, float]:
    """How late a thread that sleeps 0.5 ms wakes up: the machine's own timing noise.

    On a virtual machine an idle virtual CPU is halted and woken by the hypervisor, which can
    take milliseconds; no daemon answers faster than the machine wakes it.
    """
    late: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        time.sleep(0.0005)
        late.append(time.perf_counter() - t0 - 0.0005)
    return {"p99": 1000 * percentile(late, 99), "p99.9": 1000 * percentile(late, 99.9),
            "max": 1000 * max(late), "over 5 ms per s": sum(x > 0.005 for x in late) / seconds}


# -- running and reporting ---------------------------------------------------------------------
def _repeat(daemon: Daemon, test: Callable[[], dict[str, float]], runs: int) -> list[Run]:
    return [_measured(daemon, test) for _ in range(runs)]


def _spread(runs: list[Run], name: str) -> Spread:
    return Spread.of([run.figures[name] for run in runs])


def _cpu(runs: list[Run]) -> str:
    return Spread.of([run.cpu_percent for run in runs]).format("{:.0f}", "%")


def _by_stage(runs: list[Run]) -> str:
    """The worst poll round trip in each stage of the build, over the runs."""
    worst: dict[str, float] = {}
    for run in runs:
        for key, value in run.figures.items():
            if key.startswith("stage max "):
                stage = key.removeprefix("stage max ")
                worst[stage] = max(worst.get(stage, 0.0), value)
    return ", ".join(f"{stage} {value:.1f}" for stage, value in worst.items())


def _row(test: str, ours: str, phd2: str, bar: str, passed: bool | None) -> str:
    verdict = "—" if passed is None else ("PASS" if passed else "**FAIL**")
    return f"| {test} | {ours} | {phd2} | {bar} | {verdict} |"


def run(quick: bool) -> str:
    runs = 3 if quick else 6
    build_runs = 1 if quick else 3
    with running_daemon() as daemon:
        with LineSocket.connect(daemon.port) as control:
            control.call("set_connected", [True])
        piped = _repeat(daemon, lambda: pipelined(daemon.port), runs)
        seq = _repeat(daemon, lambda: sequential(daemon.port), runs)
        fan = _repeat(daemon, lambda: fan_out(daemon.port), runs)
        fan_selector = _repeat(daemon, lambda: fan_out_selector(daemon.port), runs)
        bursts = _repeat(daemon, lambda: burst(daemon.port), runs)
    builds: list[tuple[str, list[Run]]] = []
    wakeups = wakeup_lateness(WAKEUP_S)
    with running_daemon("--sim-size", BUILD_SIZE, "--sim-time-scale", "0.01") as daemon:
        with LineSocket.connect(daemon.port) as control:
            control.call("set_connected", [True])
        idle = _repeat(daemon, lambda: polling_during_build(daemon.port, None), build_runs)
        dark = {"exposures": [1000, 2000], "frame_count": 5}
        builds.append(("dark library (2 exposures × 5 frames)", _repeat(
            daemon, lambda: polling_during_build(daemon.port, "start_dark_library_build", dark),
            build_runs)))
        if not quick:
            defect = {"exposure_time": 1000, "frame_count": 5}
            builds.append(("defect map (5 frames, 31×31 median)", _repeat(
                daemon, lambda: polling_during_build(daemon.port, "start_defect_map_build",
                                                     defect), build_runs)))
    return _report(runs, build_runs, piped, seq, fan, fan_selector, bursts, builds, idle,
                   wakeups)


def _cpu_per_request(runs: list[Run]) -> str:
    """Daemon CPU per request, µs: CPU share × wall time / requests."""
    return Spread.of([r.cpu_percent / 100 / r.figures["rate"] * 1e6 for r in runs]).format(
        "{:.0f}", " µs")


def _report(runs: int, build_runs: int, piped: list[Run], seq: list[Run], fan: list[Run],
            fan_selector: list[Run], bursts: list[Run], builds: list[tuple[str, list[Run]]],
            idle: list[Run], wakeups: dict[str, float]) -> str:
    ms = "{:.3f}"
    rate = _spread(piped, "rate")
    seq50, seq99 = _spread(seq, "p50"), _spread(seq, "p99")
    fan_rate, fan99 = _spread(fan, "rate"), _spread(fan, "p99")
    greeted = _spread(bursts, "greeted")
    rows = [
        "| test | phdserver | PHD2 (measured here) | bar | result |",
        "|---|---|---|---|---|",
        _row("1. 20,000 pipelined, one connection (req/s)", rate.format(),
             "26,600 (20,600-33,000)", "≥ 27,000", rate.median >= 27_000),
        _row("1. daemon CPU", _cpu(piped), "94%", "", None),
        _row("2. 1,000 sequential: p50 (ms)", seq50.format(ms), "0.089 (0.074-0.126)", "≤ 0.2",
             seq50.median <= 0.2),
        _row("2. 1,000 sequential: p99 (ms)", seq99.format(ms), "0.138 (0.128-1.79)", "≤ 0.5",
             seq99.median <= 0.5),
        _row("2. 1,000 sequential: mean (ms)", _spread(seq, "mean").format(ms), "0.089", "",
             None),
        _row("2. 1,000 sequential: req/s", _spread(seq, "rate").format(), "11,200", "", None),
        _row("2. daemon CPU", _cpu(seq), "96%", "", None),
        _row("3. 50 connections × 200, a thread per connection (PHD2's client): req/s",
             fan_rate.format(), "14,200 (11,700-17,100)", "≥ 14,200 (goal 21,000)",
             fan_rate.median >= 14_200),
        _row("3. 50 × 200: p50 (ms)", _spread(fan, "p50").format("{:.2f}"), "3.3 (2.5-3.5)", "",
             None),
        _row("3. 50 × 200: p99 (ms)", fan99.format("{:.2f}"), "16.5 (4.0-21.4)", "≤ 16",
             fan99.median <= 16),
        _row("3. 50 × 200: max (ms)", _spread(fan, "max").format("{:.1f}"), "≈ 30", "", None),
        _row("3. daemon CPU", _cpu(fan), "98%", "", None),
        _row("3. daemon CPU per request", _cpu_per_request(fan),
             "≈ 70 µs (98% / 14,200/s)", "", None),
        _row("3b. the same 50 × 200 from one selector thread (bursty, not the bar): req/s",
             _spread(fan_selector, "rate").format(), "not measured", "", None),
        _row("3b. p50 / p99 (ms)",
             f"{_spread(fan_selector, 'p50').format('{:.2f}')} / "
             f"{_spread(fan_selector, 'p99').format('{:.2f}')}", "", "", None),
        _row("3b. daemon CPU per request",
             _cpu_per_request(fan_selector), "", "", None),
        _row(f"4. {BURST_CLIENTS} clients connecting at once: greeted within 5 s",
             f"{greeted.format()} of {BURST_CLIENTS}",
             "about 2/3 of 50 (listen backlog 5)", f"all {BURST_CLIENTS}",
             greeted.low == BURST_CLIENTS),
        _row("4. slowest greeting (ms)", _spread(bursts, "slowest").format("{:.1f}"), "", "",
             None),
    ]
    rows += [
        _row(f"5. the same {POLL_CLIENTS} clients polling with no build running, "
             f"{IDLE_POLL_S:g} s: p99 (ms)", _spread(idle, "p99").format("{:.2f}"), "", "",
             None),
        _row("5. same: max (ms)", _spread(idle, "max").format("{:.1f}"), "", "", None),
        _row(f"5. the machine: a thread sleeping 0.5 ms for {WAKEUP_S:g} s wakes late by, "
             "p99 / p99.9 / max (ms)",
             f"{wakeups['p99']:.2f} / {wakeups['p99.9']:.2f} / {wakeups['max']:.1f} "
             f"({wakeups['over 5 ms per s']:.1f} wake-ups a second over 5 ms late)", "", "",
             None),
    ]
    for name, build in builds:
        p99 = _spread(build, "p99")
        rows += [
            _row(f"5. {POLL_CLIENTS} clients polling during a {BUILD_SIZE} {name}: p99 (ms)",
                 p99.format("{:.2f}"), "no such API", "< 5", p99.median < 5),
            _row("5. same: max (ms)", _spread(build, "max").format("{:.1f}"), "", "", None),
            _row("5. same: worst poll by build stage (ms)", _by_stage(build), "", "", None),
            _row("5. same: polls timed", _spread(build, "polls").format(), "", "", None),
            _row("5. same: build time (s)", _spread(build, "build_s").format("{:.1f}"), "", "",
                 None),
            _row("5. daemon CPU", _cpu(build), "", "", None),
        ]
    groups = [("1", piped), ("2", seq), ("3", fan), ("3b", fan_selector), ("4", bursts),
              ("5 (no build)", idle)]
    groups += [(f"5 ({name.split(' (')[0]})", build) for name, build in builds]
    others = "; ".join(
        f"test {label}: {Spread.of([r.others_percent for r in group]).format('{:.0f}', '%')}"
        for label, group in groups
    )
    return "\n".join([
        "## Protocol: throughput and latency against PHD2",
        "",
        "The daemon (`phdserver serve`, its own process, simulator connected and stopped) is "
        "driven by a Python client over 127.0.0.1 with TCP_NODELAY, using the method real PHD2 "
        "was measured with on this machine (reference/phd2.md §7): request "
        '`{"method":"get_app_state","id":N}`, greeting skipped before timing, daemon CPU = '
        "utime+stime from /proc over the test's wall time. Figures are median (min-max) over "
        f"{runs} runs; a bar passes when the median meets it (for test 4, every run). Test 5 "
        f"polls `get_dark_library_status` and `get_app_state` alternately, each client every "
        f"{1000 * POLL_PERIOD_S:.0f} ms (all {POLL_CLIENTS} connections driven by one selector "
        "thread, so the client adds microseconds, not GIL contention), while the daemon "
        "(started with `--sim-size "
        f"{BUILD_SIZE} --sim-time-scale 0.01`) runs one build per run ({build_runs} "
        "run(s)); only polls sent while the build ran count. The same polling of the same "
        "daemon with no build running, and how late a sleeping thread wakes on this machine, "
        "are measured in the same run: they are the floor under the build figures (on this "
        "virtual machine an idle virtual CPU is halted and woken by the hypervisor). The "
        "client shares the 2-core machine with the daemon, as PHD2's did, so these are the "
        "rates this client sees.",
        "",
        *rows,
        "",
        "CPU used by other processes on the machine during the runs (% of one core, median "
        f"(min-max); near 0 when the machine was otherwise idle): {others}.",
    ])
