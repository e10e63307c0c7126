"""TCP transport: accept clients, greet them, read request lines, write replies and events.

This is the only module in ``rpc/`` that touches trio streams. Its policies:

* **Greeting.** On accept the client gets the catch-up events (``Version`` first, ``AppState``
  last) and joins the event bus in the same step, without a checkpoint in between, so it sees
  every later event exactly once.
* **One outbox per client.** Replies and events go out in the order they were produced (an
  event caused by a request precedes its reply). When nothing is queued and no send is under
  way they are written at once, with one non-blocking ``write``; the replies to the requests in
  one received chunk are written together, so pipelined requests stay cheap. Whatever the
  socket does not take waits in the outbox for the connection's writer task, which flushes
  everything queued in one ``send_all``. Writing at once spares the writer task's wake-up: an
  event broadcast to 100 clients cost the loop about 8 ms through the writer tasks.
* **Bounded memory.** A request line is at most ``max_line`` bytes. When a client stops reading,
  its reader pauses once ``pause_bytes`` of replies are pending; if events alone push the outbox
  past ``drop_bytes`` the client is dropped (logged), so a stuck client never stalls the others.
* **Requests run in order** per connection, as PHD2 runs them; a handler that waits delays only
  its own connection.
* **Idle clients are never closed.** A peer's EOF or reset ends only its own connection.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
import trio

from ._bus import EventBus
from ._codec import INTERNAL_ERROR, Batch, decode_line, encode_error
from ._dispatch import Dispatcher
from ._framing import DEFAULT_MAX_LINE, OVERSIZE, LineSplitter
from .events import Event

__all__ = ["Connection", "Connections", "ServerLimits", "serve_event_server"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_RECEIVE_SIZE = 65536


class ServerLimits:
    """Per-connection limits (plain values; one instance shared by all connections)."""

    __slots__ = ("drop_bytes", "flush_timeout", "max_line", "pause_bytes")

    def __init__(
        self,
        *,
        max_line: int = DEFAULT_MAX_LINE,
        pause_bytes: int = 1 << 20,
        drop_bytes: int = 16 << 20,
        flush_timeout: float = 5.0,
    ) -> None:
        self.max_line = max_line
        self.pause_bytes = pause_bytes
        self.drop_bytes = drop_bytes
        self.flush_timeout = flush_timeout


class _Outbox:
    """Bytes waiting to be written to one client.

    ``fileno`` gives the socket's descriptor for writing at once, or -1 once the socket is
    closed (asked at every write, so a closed connection's number, which the kernel may
    already have given to a new connection, is never written to). None: no socket (always
    queue).
    """

    __slots__ = ("chunks", "closed", "drained", "fileno", "overflowed", "size", "wakeup",
                 "writing")

    def __init__(self, fileno: Callable[[], int] | None = None) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.wakeup = trio.Event()
        self.drained = trio.Event()
        self.closed = False
        self.overflowed = False
        self.fileno = fileno
        self.writing = False
        """The writer task is in ``send_all``: nothing may be written past it."""

    def put(self, data: bytes) -> None:
        """Write ``data`` now if the connection is idle, else queue it for the writer task."""
        self.hold(data)
        self.flush()

    def hold(self, data: bytes) -> None:
        """Queue ``data`` for :meth:`flush` (replies to the rest of a chunk of requests)."""
        self.chunks.append(data)
        self.size += len(data)

    def flush(self) -> None:
        """Write what is queued now if the connection is idle, else wake the writer."""
        if not self.chunks:
            return
        if not self.writing and not self.closed:
            rest = self._write_now(b"".join(self.chunks) if len(self.chunks) > 1
                                   else self.chunks[0])
            self.chunks.clear()
            self.size = 0
            if not rest:
                # Nothing left for the writer: un-wake it, and release anyone waiting for
                # the outbox to drain.
                if self.wakeup.is_set():
                    self.wakeup = trio.Event()
                self.drained.set()
                return
            self.chunks.append(rest)
            self.size = len(rest)
        self.wakeup.set()

    def _write_now(self, data: bytes) -> bytes:
        """Hand ``data`` to the socket without waiting; return what it did not take.

        Any error leaves the data queued: the writer task's ``send_all`` meets the same error
        and ends the connection the usual way.
        """
        fd = self.fileno() if self.fileno is not None and not self.closed else -1
        if fd < 0:
            return data
        try:
            sent = os.write(fd, data)
        except OSError:
            return data
        return data[sent:]

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.size = 0
        self.wakeup = trio.Event()
        return data


class Connection:
    """One client: a reader loop (this task) and a writer task."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        dispatcher: Dispatcher,
        limits: ServerLimits,
        logger: Any,
    ) -> None:
        self._stream = stream
        self._dispatcher = dispatcher
        self._limits = limits
        self._log = logger
        socket = getattr(stream, "socket", None)
        self._outbox = _Outbox(socket.fileno if socket is not None else None)
        self._scope: trio.CancelScope | None = None

    def push_event(self, line: bytes) -> None:
        """Bus subscriber: queue an event line, or mark the client for dropping."""
        outbox = self._outbox
        if outbox.overflowed:
            return
        if outbox.size + len(line) > self._limits.drop_bytes:
            # The writer task may be stuck in ``send_all`` on a client that stopped reading:
            # end the connection from here rather than wait for it.
            outbox.overflowed = True
            outbox.wakeup.set()
            self._log.warning("client too slow for its events; dropping it",
                              pending_bytes=outbox.size)
            if self._scope is not None:
                self._scope.cancel()
            return
        outbox.put(line)

    def queue(self, data: bytes) -> None:
        self._outbox.put(data)

    async def wait_flushed(self) -> None:
        """Return once everything queued so far has been handed to the socket."""
        outbox = self._outbox
        while outbox.chunks and not outbox.overflowed:
            outbox.drained = trio.Event()
            await outbox.drained.wait()

    async def run(self) -> None:
        """Serve until the peer goes away; never raises for a broken peer."""
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                nursery.start_soon(self._write_loop, nursery.cancel_scope)
                try:
                    await self._read_loop()
                finally:
                    # Flush what is queued, but never wait forever for a client that
                    # stopped reading.
                    self._outbox.closed = True
                    self._outbox.wakeup.set()
                    nursery.cancel_scope.deadline = (
                        trio.current_time() + self._limits.flush_timeout
                    )
        finally:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await trio.aclose_forcefully(self._stream)

    async def _read_loop(self) -> None:
        # The peer resetting or closing the connection ends it quietly.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._read_requests()

    async def _read_requests(self) -> None:
        splitter = LineSplitter(self._limits.max_line)
        dispatcher = self._dispatcher
        outbox = self._outbox
        pause_bytes = self._limits.pause_bytes
        receive_some = _raw_receiver(self._stream)
        while True:
            data = await receive_some(_RECEIVE_SIZE)
            if not data:
                return
            for item in splitter.feed(data):
                if item is OVERSIZE:
                    outbox.hold(_too_big(self._limits.max_line))
                    continue
                assert isinstance(item, bytes)
                message = decode_line(item)
                if type(message) is Batch:
                    outbox.flush()
                    reply = await dispatcher.run(message)
                else:
                    reply = dispatcher.start(message)
                    if reply is not None and type(reply) is not bytes:
                        outbox.flush()  # what is ready goes out while this handler waits
                        reply = await reply
                if reply is not None:
                    outbox.hold(reply + b"\r\n")
            outbox.flush()
            if outbox.overflowed:
                return
            while outbox.size > pause_bytes and not outbox.overflowed:
                outbox.drained = trio.Event()
                await outbox.drained.wait()

    async def _write_loop(self, cancel_scope: trio.CancelScope) -> None:
        outbox = self._outbox
        send_all = self._stream.send_all
        try:
            while True:
                if not outbox.chunks:
                    if outbox.overflowed:
                        break
                    if outbox.closed:
                        break
                    await outbox.wakeup.wait()
                    continue
                data = outbox.take()
                outbox.writing = True
                try:
                    await send_all(data)
                finally:
                    outbox.writing = False
                outbox.drained.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            outbox.drained.set()
        if outbox.overflowed or not outbox.closed:
            cancel_scope.cancel()


def _raw_receiver(stream: trio.abc.Stream) -> Callable[[int], Awaitable[bytes]]:
    """``receive_some`` for a socket stream, without trio's stream and socket wrappers.

    The same steps as ``SocketStream.receive_some`` (read if data is there, else wait until
    the socket is readable; one scheduling point per read, so a client that floods never
    starves the others), in one function: the wrappers' layers were about a tenth of the
    daemon's CPU in the 50-connection benchmark (``docs/performance.md``). Reset and EOF
    behave as the stream's: ``b""`` ends the connection, an error raises BrokenResourceError.
    A stream that is not a socket (a test's memory stream) keeps its own ``receive_some``.
    """
    sock = getattr(stream, "socket", None)
    if sock is None:
        return stream.receive_some
    fd = sock.fileno()
    wait_readable = trio.lowlevel.wait_readable
    yield_once = trio.lowlevel.cancel_shielded_checkpoint

    async def receive_some(max_bytes: int) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                await wait_readable(sock)
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(exc) from exc
            await yield_once()
            return data

    return receive_some


class Connections:
    """The live connections, so that a shutdown can let their last replies go out."""

    def __init__(self) -> None:
        self._live: set[Connection] = set()

    def __len__(self) -> int:
        return len(self._live)

    def add(self, connection: Connection) -> None:
        self._live.add(connection)

    def discard(self, connection: Connection) -> None:
        self._live.discard(connection)

    async def flush_all(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until every queued reply and event is written."""
        with trio.move_on_after(timeout_s):
            for connection in list(self._live):
                await connection.wait_flushed()


def _too_big(max_line: int) -> bytes:
    return encode_error(INTERNAL_ERROR, f"too big (request line over {max_line} bytes)") + b"\r\n"


def _peer_address(stream: trio.abc.Stream) -> str:
    socket = getattr(stream, "socket", None)
    if socket is None:
        return "?"
    try:
        host, *_ = socket.getpeername()
    except OSError:
        return "?"
    return str(host)


def _allowed(address: str, allow: Sequence[IPNetwork] | None) -> bool:
    if not allow:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in allow)


async def serve_event_server(
    dispatcher: Dispatcher,
    bus: EventBus,
    greeting: Callable[[], Sequence[Event]],
    *,
    host: str = "127.0.0.1",
    port: int = 4400,
    limits: ServerLimits | None = None,
    allow: Sequence[IPNetwork] | None = None,
    connections: Connections | None = None,
    logger: Any = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` (port 0 picks a free one) and serve clients until cancelled.

    ``task_status.started`` reports the listeners, so a caller can read the bound address.
    """
    limits = limits or ServerLimits()
    live = connections if connections is not None else Connections()
    log = logger if logger is not None else structlog.get_logger("phdserver.rpc")
    # A deep accept backlog: PHD2's backlog of 5 loses clients that connect all at once.
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=4096)

    async def handle(stream: trio.SocketStream) -> None:
        peer = _peer_address(stream)
        conn_log = log.bind(peer=peer)
        if not _allowed(peer, allow):
            conn_log.warning("connection refused by the allow list")
            await trio.aclose_forcefully(stream)
            return
        connection = Connection(stream, dispatcher, limits, conn_log)
        connection.queue(bus.encode_all(greeting()))
        unsubscribe = bus.subscribe(connection.push_event)
        live.add(connection)
        conn_log.debug("client connected")
        try:
            await connection.run()
        except Exception:
            # A bug must cost one connection, never the server.
            conn_log.exception("connection failed")
        finally:
            unsubscribe()
            live.discard(connection)
            conn_log.debug("client disconnected")

    async with trio.open_nursery() as nursery:
        task_status.started(listeners)
        await trio.serve_listeners(handle, listeners, handler_nursery=nursery)
