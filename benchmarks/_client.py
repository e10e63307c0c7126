"""Load-client helpers shared by the protocol benchmarks: a daemon in its own process, and
blocking socket clients that talk to it the way PHD2 was measured (reference/phd2.md §7).

The daemon runs as a separate process so that the client threads never share its GIL; the
clients are plain blocking sockets with ``TCP_NODELAY`` over 127.0.0.1, which is what the
Python 3.11 client that measured real PHD2 on this machine used. The daemon's CPU time comes
from ``/proc/<pid>/stat`` (utime + stime), as it did for PHD2; the machine's total from
``/proc/stat`` tells how much else ran at the same time. For the status-polling test there is
a non-blocking :class:`PollingClient` (many of them are driven by one selector thread) and an
:class:`OperationWatch` that follows a build's events without blocking.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "Daemon",
    "LineSocket",
    "OperationWatch",
    "PollingClient",
    "Spread",
    "cpu_seconds",
    "free_port",
    "machine_busy_seconds",
    "own_cpu_seconds",
    "percentile",
    "request_line",
    "running_daemon",
]

HOST = "127.0.0.1"
_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A loopback port that was free a moment ago (the daemon binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def own_cpu_seconds() -> float:
    """CPU time of this process, all its threads (the load client)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU time every process on the machine has used since boot (idle and iowait excluded).

    Minus the daemon's and the client's own, it tells how much other work (another engineer's
    test run, say) competed for the two cores during a measurement.
    """
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def request_line(request_id: int, method: str = "get_app_state", params: Any = None) -> bytes:
    """The request PHD2 was measured with: ``{"method":"get_app_state","id":N}\\r\\n``."""
    if params is None:
        return b'{"method":"%s","id":%d}\r\n' % (method.encode(), request_id)
    return orjson.dumps({"method": method, "params": params, "id": request_id}) + b"\r\n"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by the nearest-rank method: a value that was observed."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True, kw_only=True)
class Spread:
    """Median and range of one figure over repeated runs."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(median=statistics.median(values), low=min(values), high=max(values))

    def format(self, fmt: str = "{:,.0f}", unit: str = "") -> str:
        return (f"{fmt.format(self.median)}{unit} "
                f"({fmt.format(self.low)}-{fmt.format(self.high)})")


class LineSocket:
    """A blocking client socket that reads CRLF lines; ``TCP_NODELAY`` as PHD2 was measured."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    @classmethod
    def connect(cls, port: int, *, timeout: float = 10.0, skip_greeting: bool = True
                ) -> LineSocket:
        sock = socket.create_connection((HOST, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = cls(sock)
        if skip_greeting:
            client.read_greeting()
        return client

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> LineSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_line(self) -> bytes:
        """One line without its CRLF; raises EOFError if the server closes first."""
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n")
            if end >= 0:
                self._buffer = buffer[end + 1 :]
                return buffer[: end - 1] if end and buffer[end - 1] == 13 else buffer[:end]
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("server closed the connection")
            buffer += chunk

    def take_buffered(self) -> bytes:
        """Bytes received but not yet returned as lines (to switch to raw, non-blocking reads)."""
        data, self._buffer = self._buffer, b""
        return data

    def read_greeting(self) -> list[str]:
        """Read events up to and including AppState; returns the event names in order."""
        names: list[str] = []
        while True:
            event = orjson.loads(self.read_line()).get("Event")
            names.append(str(event))
            if event == "AppState":
                return names

    def reply(self, request_id: Any) -> dict[str, Any]:
        """The reply with this id, skipping any events that arrive first."""
        while True:
            line = self.read_line()
            if line.startswith(b'{"Event"'):
                continue
            message = orjson.loads(line)
            if message.get("id") != request_id:
                raise AssertionError(f"expected the reply to {request_id}, got {message!r}")
            return message

    def call(self, method: str, params: Any = None, request_id: int = 1) -> Any:
        self.sock.sendall(request_line(request_id, method, params))
        message = self.reply(request_id)
        if "error" in message:
            raise RuntimeError(f"{method} failed: {message['error']}")
        return message["result"]


class PollingClient:
    """One polling client: a non-blocking socket with at most one request outstanding, asking
    ``methods`` in turn."""

    __slots__ = ("buffer", "index", "methods", "number", "sent_at", "sock")

    def __init__(self, client: LineSocket, index: int,
                 methods: tuple[str, ...] = ("get_app_state", "get_dark_library_status")) -> None:
        self.buffer = client.take_buffered()
        client.sock.setblocking(False)
        self.sock = client.sock
        self.index = index
        self.methods = methods
        self.number = 0
        self.sent_at = 0.0

    def send(self) -> None:
        self.number += 1
        poll = self.methods[self.number % len(self.methods)]
        self.sent_at = time.perf_counter()
        self.sock.send(request_line(self.number, poll))  # ~60 bytes: never a partial send

    def replied(self) -> bool:
        """Read what arrived; True once the reply to the outstanding request is in."""
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the daemon closed a polling connection")
        lines = (self.buffer + chunk).split(b"\r\n")
        self.buffer = lines.pop()
        done = False
        for line in lines:
            if line.startswith(b'{"Event"'):
                continue
            reply = orjson.loads(line)
            if reply.get("id") != self.number or "result" not in reply:
                raise AssertionError(f"unexpected reply to poll {self.number}: {line!r}")
            done = True
        return done


class OperationWatch:
    """Follows the control connection without blocking: the start reply (the operation id),
    then the events until that operation's OperationFinished (its status)."""

    def __init__(self, method: str, buffered: bytes = b"") -> None:
        self._method = method
        self._pending = b""
        self.op_id: int | None = None
        self.status: str | None = None
        self.stages: list[tuple[float, str]] = [(time.perf_counter(), "starting")]
        """(when it was seen, status) of every stage the operation announced."""
        if buffered:
            self.feed(buffered)

    def feed(self, data: bytes) -> None:
        if not data:
            raise EOFError("the daemon closed the control connection")
        lines = (self._pending + data).split(b"\r\n")
        self._pending = lines.pop()
        for line in lines:
            message = orjson.loads(line)
            if message.get("id") == 1:
                if "error" in message:
                    raise RuntimeError(f"{self._method} failed: {message['error']}")
                self.op_id = int(message["result"]["operation_id"])
            elif message.get("OperationId") != self.op_id:
                continue
            elif message.get("Event") == "OperationFinished":
                self.status = str(message["Status"])
            elif message.get("Event") == "OperationProgress" and \
                    message.get("Status") != self.stages[-1][1]:
                self.stages.append((time.perf_counter(), str(message["Status"])))


@dataclass(slots=True)
class Daemon:
    """A running ``phdserver serve`` process and where to reach it."""

    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log_path: Path

    def log_tail(self, limit: int = 2000) -> str:
        """The end of the daemon's stderr (its warnings and errors)."""
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def alive(self) -> bool:
        return self.process.poll() is None


def _wait_accepting(daemon: Daemon, timeout: float) -> None:
    """Poll connect until the daemon accepts (no fixed sleeps), or fail with its stderr."""
    deadline = time.monotonic() + timeout
    while True:
        if not daemon.alive():
            raise RuntimeError(f"the daemon exited with {daemon.process.returncode}: "
                               f"{daemon.log_tail()}")
        try:
            with LineSocket.connect(daemon.port, timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not accept within {timeout} s") from None
            # Short back-off between connection attempts while the daemon imports.
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.process.wait(0.02)


@contextlib.contextmanager
def running_daemon(*extra: str, start_timeout: float = 30.0) -> Iterator[Daemon]:
    """Start ``phdserver serve`` on a free loopback port with a temporary data directory."""
    work = Path(tempfile.mkdtemp(prefix="phdserver-bench-"))
    data_dir = work / "data"
    log_path = work / "stderr.log"
    port = free_port()
    command = [sys.executable, "-m", "phdserver", "serve", "--listen", HOST, "--port", str(port),
               "--data-dir", str(data_dir), "--camera", "simulator", "--log-level", "warning",
               *extra]
    # stderr goes to a file: a pipe nobody drains would block the daemon once it filled.
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=log)
    daemon = Daemon(process=process, port=port, data_dir=data_dir, log_path=log_path)
    try:
        _wait_accepting(daemon, start_timeout)
        yield daemon
    finally:
        if daemon.alive():
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(work, ignore_errors=True)
