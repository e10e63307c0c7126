"""Run Debian's ``indiserver`` in a private network namespace and reach it from this process.

Why this shape. indiserver 1.9.9 cannot bind to loopback only: it listens on ``0.0.0.0``, and a
second one in the same namespace clashes on its abstract unix socket. So every server we start
lives in a fresh network namespace that has nothing but ``lo``:

* :class:`PrivateNetwork` starts a holder process, ``unshare --net -- sh -c 'ip link set lo up;
  exec cat'`` (it ends when its stdin, our pipe, closes), whose namespace outlives any one
  server, so a test can kill indiserver and start it again on the same port;
* :class:`IndiServer` runs ``nsenter --net=/proc/<holder>/ns/net indiserver ...`` (its own session,
  a temporary ``HOME``, distinct ``-p``/``-u``), and is stopped by killing its process group;
* the test process itself stays in the host namespace. It opens sockets *inside* the private one
  from a short-lived thread that calls ``setns(2)``: network namespaces are per thread, and a
  socket stays in the namespace it was created in, so trio then uses it like any other.
  :meth:`PrivateNetwork.open_stream` is an ``open_stream`` for :class:`IndiClient`.

Needs root (``unshare --net`` and ``setns``), ``unshare``/``nsenter`` (util-linux), ``ip``
(iproute2) and ``indi-bin``. :func:`missing_tools` says what is absent.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Final

import trio

from phdserver.cameras.indi._xml import DefVector, IndiParser

__all__ = ["HostNetwork", "IndiServer", "NetnsUnavailable", "PrivateNetwork", "missing_tools"]

_CLONE_NEWNET: Final = 0x40000000
_TOOLS: Final = ("indiserver", "unshare", "nsenter", "ip")


class NetnsUnavailable(RuntimeError):
    """A private network namespace cannot be created or entered here (not root?)."""


def missing_tools(*drivers: str) -> list[str]:
    """The executables (tools and INDI drivers) that are not on PATH."""
    return [t for t in (*_TOOLS, *drivers) if shutil.which(t) is None]


class PrivateNetwork:
    """A network namespace with only loopback, kept alive by a holder process."""

    def __init__(self, holder: subprocess.Popen[bytes], ns_fd: int) -> None:
        self._holder = holder
        self._ns_fd = ns_fd
        self.ns_path = f"/proc/{holder.pid}/ns/net"

    @classmethod
    def start(cls, timeout_s: float = 10.0) -> PrivateNetwork:
        # The holder waits for EOF on its stdin, so it also ends if this process dies.
        holder = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c",
             "ip link set lo up && echo ready && exec cat >/dev/null"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.PIPE,
            start_new_session=True,
        )
        assert holder.stdout is not None
        line = _readline(holder.stdout, timeout_s)
        if line.strip() != b"ready":
            holder.kill()
            _, err = holder.communicate(timeout=5)
            raise NetnsUnavailable(
                "cannot create a private network namespace with `unshare --net` "
                f"(needs root): {err.decode(errors='replace').strip() or 'no output'}"
            )
        ns_fd = os.open(f"/proc/{holder.pid}/ns/net", os.O_RDONLY)
        net = cls(holder, ns_fd)
        try:
            net.socket().close()
        except OSError as exc:
            net.close()
            raise NetnsUnavailable(f"cannot enter the private network namespace: {exc}") from exc
        return net

    def socket(self) -> socket.socket:
        """A new TCP socket that lives in the private namespace."""
        result: list[socket.socket | OSError] = []

        def make() -> None:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(self._ns_fd, _CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                result.append(OSError(errno, f"setns: {os.strerror(errno)}"))
                return
            result.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))

        thread = threading.Thread(target=make, name="netns-socket")
        thread.start()
        thread.join()
        if isinstance(result[0], OSError):
            raise result[0]
        return result[0]

    async def open_stream(self, host: str, port: int) -> trio.SocketStream:
        """Like ``trio.open_tcp_stream``, but inside the namespace (IPv4 literal or localhost)."""
        address = "127.0.0.1" if host == "localhost" else host
        sock = trio.socket.from_stdlib_socket(self.socket())
        try:
            await sock.connect((address, port))
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)

    def connect(self, port: int, timeout_s: float) -> socket.socket:
        """A blocking connection to ``127.0.0.1:port`` inside the namespace."""
        sock = self.socket()
        sock.settimeout(timeout_s)
        try:
            sock.connect(("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return sock

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a program inside the namespace, in its own session."""
        return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
            ["nsenter", f"--net={self.ns_path}", "--", *argv],
            start_new_session=True, **kwargs,
        )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._ns_fd)
        if self._holder.stdin is not None:
            self._holder.stdin.close()
        _kill_group(self._holder)


class HostNetwork:
    """The fallback when no private namespace can be made (not root): the host's own network.

    indiserver then listens on all interfaces of the host for as long as it runs; use a random
    high port and say so. Only the benchmark uses this; the tests insist on a namespace.
    """

    def socket(self) -> socket.socket:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    async def open_stream(self, host: str, port: int) -> trio.SocketStream:
        return await trio.open_tcp_stream(host, port)

    def connect(self, port: int, timeout_s: float) -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=timeout_s)

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, start_new_session=True, **kwargs)  # type: ignore[call-overload,no-any-return]

    def close(self) -> None:
        pass


class IndiServer:
    """One ``indiserver`` with the given drivers, inside a :class:`PrivateNetwork`."""

    def __init__(
        self,
        net: PrivateNetwork | HostNetwork,
        drivers: Sequence[str],
        *,
        port: int,
        home: Path,
        log_path: Path,
        max_queue_mb: int = 1024,
        env: dict[str, str] | None = None,
    ) -> None:
        self.net = net
        self.drivers = list(drivers)
        self.port = port
        self.home = home
        self.log_path = log_path
        self.max_queue_mb = max_queue_mb
        self._env = env or {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, *, device: str, timeout_s: float = 15.0) -> None:
        """Start the server and return once ``device`` has defined its CONNECTION property."""
        if self.running:
            raise RuntimeError("indiserver already running")
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HOME": str(self.home), **self._env}
        argv = ["indiserver", "-v", "-p", str(self.port), "-u", f"/tmp/phd-indiserver-{self.port}",
                "-m", str(self.max_queue_mb), "-r", "10", *self.drivers]
        proc = self.net.popen(argv, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._proc = proc
        listening = threading.Event()
        self._reader = threading.Thread(
            target=_copy_log, args=(proc.stderr, self.log_path, listening), daemon=True
        )
        self._reader.start()
        deadline = time.monotonic() + timeout_s
        while not listening.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"indiserver did not start:\n{self.log_tail()}")
        self.wait_device(device, deadline - time.monotonic())

    def wait_device(self, device: str, timeout_s: float) -> None:
        """Block until ``device`` defines CONNECTION (one connection, one getProperties)."""
        deadline = time.monotonic() + timeout_s
        with self.net.connect(self.port, timeout_s) as sock:
            sock.sendall(b'<getProperties version="1.7"/>')
            parser = IndiParser()
            while True:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    data = sock.recv(1 << 16)
                except TimeoutError:
                    data = b""
                if not data:
                    raise RuntimeError(f"{device!r} never appeared:\n{self.log_tail()}")
                for event in parser.feed(data):
                    if (isinstance(event, DefVector) and event.device == device
                            and event.name == "CONNECTION"):
                        return

    def kill(self) -> None:
        """SIGKILL the server and its drivers (a crash, as far as clients can tell)."""
        if self._proc is not None:
            _kill_group(self._proc, signal.SIGKILL)
            self._finish()

    def stop(self) -> None:
        if self._proc is not None:
            _kill_group(self._proc, signal.SIGTERM)
            self._finish()

    def _finish(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._proc = self._reader = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _readline(stream: IO[bytes], timeout_s: float) -> bytes:
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return out[0] if out else b""


def _copy_log(stream: IO[bytes] | None, path: Path, listening: threading.Event) -> None:
    if stream is None:
        return
    with path.open("ab") as log:
        for line in stream:
            log.write(line)
            log.flush()
            if b"listening to port" in line:
                listening.set()


def _kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
