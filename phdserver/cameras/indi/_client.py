"""A trio-native INDI client: one connection to indiserver, a property store and waiters.

:meth:`IndiClient.run` is a background task (start it with ``nursery.start``). It connects, sends
``getProperties``, feeds the received bytes to :class:`~phdserver.cameras.indi._xml.IndiParser`,
keeps a :class:`~phdserver.cameras.indi._store.PropertyStore` up to date, and hands every event to
the open :class:`Watch` objects and to listeners. When the server goes away (EOF, reset, garbage)
every open watch fails at once with "INDI: connection to indiserver at H:P lost", the property
store is cleared, and the task reconnects with a growing back-off (0.5 s doubling to 4 s), then
asks for the properties again. Re-arming a device (CONNECT, enableBLOB) is the camera's job: the
client only reports :class:`LinkUp`/:class:`LinkDown` and the definitions as they come back.

A ``delProperty`` for a whole device fails the watches on that device at once, with a message
that names it; so does the deletion of a property a watch depends on. Every wait has a timeout.

Sends are atomic: a cancelled caller never leaves half an XML element on the wire (each send is
shielded for at most ``send_timeout`` seconds; a server that stops reading for that long is
treated as gone).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Literal

import structlog
import trio

from phdserver.cameras.indi._store import Property, PropertyStore
from phdserver.cameras.indi._xml import (
    DefVector,
    DelProperty,
    Event,
    IndiParser,
    IndiProtocolError,
    Message,
    SetVector,
    enable_blob_xml,
    get_properties_xml,
    new_vector_xml,
)
from phdserver.errors import CameraError

__all__ = [
    "ClientEvent",
    "IndiClient",
    "IndiTimeout",
    "LinkDown",
    "LinkUp",
    "OpenStream",
    "Property",
    "Watch",
]

OpenStream = Callable[[str, int], Awaitable[trio.abc.Stream]]
"""How to reach the server: ``trio.open_tcp_stream`` by default; tests pass one that connects
inside a private network namespace."""

_RECEIVE_SIZE: Final = 256 * 1024


class IndiTimeout(CameraError):
    """A wait ran out of time (the message says what for)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkUp:
    """The connection to indiserver is (again) established and getProperties was sent."""

    address: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkDown:
    """The connection to indiserver was lost; ``reason`` says how."""

    address: str
    reason: str
    stopped: bool = False
    """True when our own task is shutting down (cancelled), not a failure of the server."""


ClientEvent = Event | LinkUp | LinkDown


class Watch:
    """A one-shot wait for the first event that satisfies ``predicate``.

    Create it with :meth:`IndiClient.watch` *before* sending the request whose answer it waits
    for, so the answer cannot slip past. It fails early when the link drops, when ``device``
    disappears, or when one of ``properties`` of that device is deleted.
    """

    __slots__ = ("_done", "_error", "_predicate", "_result", "device", "properties")

    def __init__(
        self, predicate: Callable[[Event], bool], device: str | None, properties: frozenset[str]
    ) -> None:
        self._predicate = predicate
        self.device = device
        self.properties = properties
        self._done = trio.Event()
        self._result: Event | None = None
        self._error: CameraError | None = None

    def offer(self, event: Event) -> None:
        if not self._done.is_set() and self._predicate(event):
            self._result = event
            self._done.set()

    def fail(self, error: CameraError) -> None:
        if not self._done.is_set():
            self._error = error
            self._done.set()

    async def wait(self, *, timeout_s: float, what: str) -> Event:
        """Return the matching event; raise :class:`CameraError` on failure or after the timeout."""
        with trio.move_on_after(timeout_s):
            await self._done.wait()
        if self._result is not None:
            return self._result
        if self._error is not None:
            raise self._error
        raise IndiTimeout(f"INDI: timed out after {timeout_s:g} s waiting for {what}")


class IndiClient:
    """One INDI connection with reconnection; see the module docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        open_stream: OpenStream | None = None,
        connect_timeout: float = 10.0,
        backoff: tuple[float, float] = (0.5, 4.0),
        send_timeout: float = 10.0,
        max_blob: int = 1 << 30,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        self._open_stream: OpenStream = open_stream or trio.open_tcp_stream
        self._connect_timeout = connect_timeout
        self._backoff = backoff
        self._send_timeout = send_timeout
        self._max_blob = max_blob
        base = logger if logger is not None else structlog.get_logger("phdserver.indi")
        self._log = base.bind(indi=self.address)
        self._store = PropertyStore()
        self._watches: set[Watch] = set()
        self._listeners: list[Callable[[ClientEvent], None]] = []
        self._stream: trio.abc.Stream | None = None
        self._send_lock = trio.Lock()
        self._running = False
        self._retry_now = trio.Event()
        self._attempts = 0
        self._attempt_done = trio.Event()
        self._last_error = "no connection attempt yet"

    # -- state ------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._stream is not None

    def property(self, device: str, name: str) -> Property | None:
        return self._store.get(device, name)

    def devices(self) -> list[str]:
        return self._store.devices()

    def last_message(self, device: str) -> str | None:
        """The device's most recent ``<message>`` (drivers explain failures there)."""
        return self._store.last_message(device)

    def lost_error(self) -> CameraError:
        if self._attempts == 0 or self._running is False:
            return CameraError(f"INDI: not connected to indiserver at {self.address}")
        return CameraError(f"INDI: connection to indiserver at {self.address} lost")

    def add_listener(self, callback: Callable[[ClientEvent], None]) -> Callable[[], None]:
        """Call ``callback`` (synchronously, in the receive task) for every event and link change.
        Returns a function that removes it."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

    # -- waiting ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def watch(
        self,
        predicate: Callable[[Event], bool],
        *,
        device: str | None = None,
        properties: tuple[str, ...] = (),
    ) -> Iterator[Watch]:
        """Register a :class:`Watch` for the duration of the ``with`` block."""
        w = Watch(predicate, device, frozenset(properties))
        if self._stream is None:
            w.fail(self.lost_error())
        self._watches.add(w)
        try:
            yield w
        finally:
            self._watches.discard(w)

    async def wait_property(
        self,
        device: str,
        name: str,
        predicate: Callable[[Property], bool] | None = None,
        *,
        timeout_s: float,
        what: str | None = None,
    ) -> Property:
        """Return the property once it is defined (and satisfies ``predicate``)."""
        deadline = trio.current_time() + timeout_s
        label = what or f"'{device}.{name}'"

        def touches(ev: Event) -> bool:
            return isinstance(ev, DefVector | SetVector) and ev.device == device and ev.name == name

        while True:
            with self.watch(touches, device=device) as w:
                prop = self._store.get(device, name)
                if prop is not None and (predicate is None or predicate(prop)):
                    return prop
                remaining = deadline - trio.current_time()
                if remaining <= 0:
                    raise IndiTimeout(f"INDI: timed out after {timeout_s:g} s waiting for {label}")
                await w.wait(timeout_s=remaining, what=label)

    async def wait_link(self, *, timeout_s: float) -> None:
        """Return once connected; if not, retry now and raise if that attempt fails."""
        if self._stream is not None:
            return
        target = self._attempts + 1
        self._retry_now.set()
        with trio.move_on_after(timeout_s):
            while self._attempts < target and self._stream is None:
                await self._attempt_done.wait()
        if self._stream is None:
            raise CameraError(
                f"INDI: cannot reach indiserver at {self.address}: {self._last_error}"
            )

    # -- sending ----------------------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        """Send raw XML, whole or not at all."""
        await trio.lowlevel.checkpoint_if_cancelled()
        stream = self._stream
        if stream is None:
            raise self.lost_error()
        error: str | None = None
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self._send_timeout) as scope:
                try:
                    async with self._send_lock:
                        await stream.send_all(data)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    error = str(exc) or type(exc).__name__
            if scope.cancelled_caught:
                error = f"indiserver did not read for {self._send_timeout:g} s"
            if error is not None:
                await trio.aclose_forcefully(stream)  # the receive task notices and reconnects
        if error is not None:
            raise CameraError(f"INDI: connection to indiserver at {self.address} lost ({error})")

    async def send_new_switch(self, device: str, name: str, values: Mapping[str, bool]) -> None:
        await self.send(new_vector_xml("Switch", device, name, values))

    async def send_new_number(self, device: str, name: str, values: Mapping[str, float]) -> None:
        await self.send(new_vector_xml("Number", device, name, values))

    async def send_new_text(self, device: str, name: str, values: Mapping[str, str]) -> None:
        await self.send(new_vector_xml("Text", device, name, values))

    async def enable_blob(
        self, device: str, name: str | None, mode: Literal["Never", "Also", "Only"]
    ) -> None:
        await self.send(enable_blob_xml(device, name, mode))

    async def get_properties(self, device: str | None = None, name: str | None = None) -> None:
        await self.send(get_properties_xml(device, name))

    # -- the background task ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, receive and reconnect until cancelled."""
        if self._running:
            raise RuntimeError("IndiClient.run() is already running")
        self._running = True
        try:
            task_status.started()
            initial, ceiling = self._backoff
            delay = initial
            while True:
                stream = await self._open()
                if stream is not None:
                    delay = initial
                    await self._serve(stream)
                await self._pause(delay)
                delay = min(delay * 2, ceiling)
        finally:
            self._running = False
            self._set_link_down("client stopped", stopped=True)

    async def _open(self) -> trio.abc.Stream | None:
        try:
            with trio.fail_after(self._connect_timeout):
                stream = await self._open_stream(self.host, self.port)
        except (OSError, trio.TooSlowError) as exc:
            self._last_error = str(exc) or type(exc).__name__
            self._finish_attempt()
            self._log.debug("indiserver unreachable", reason=self._last_error)
            return None
        return stream

    def _finish_attempt(self) -> None:
        self._attempts += 1
        done, self._attempt_done = self._attempt_done, trio.Event()
        done.set()

    async def _pause(self, delay: float) -> None:
        self._retry_now = trio.Event()
        with trio.move_on_after(delay):
            await self._retry_now.wait()

    async def _serve(self, stream: trio.abc.Stream) -> None:
        parser = IndiParser(max_blob=self._max_blob)
        reason = "client stopped"
        try:
            await stream.send_all(get_properties_xml())
            self._stream = stream
            self._finish_attempt()
            self._log.info("connected to indiserver")
            self._emit(LinkUp(address=self.address))
            while True:
                data = await stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    reason = "closed by indiserver"
                    return
                for event in parser.feed(data):
                    self._dispatch(event)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason = str(exc) or type(exc).__name__
        except IndiProtocolError as exc:
            reason = exc.message
        finally:
            if self._stream is None:
                self._last_error = reason
                self._finish_attempt()
            self._set_link_down(reason, stopped=reason == "client stopped")
            await trio.aclose_forcefully(stream)

    def _set_link_down(self, reason: str, *, stopped: bool) -> None:
        was_up = self._stream is not None
        self._stream = None
        self._store.clear()
        error = CameraError(f"INDI: connection to indiserver at {self.address} lost")
        for w in list(self._watches):
            w.fail(error)
        if was_up:
            if stopped:
                self._log.debug("disconnected from indiserver")
            else:
                self._log.warning("connection to indiserver lost", reason=reason)
            self._emit(LinkDown(address=self.address, reason=reason, stopped=stopped))

    def _emit(self, event: ClientEvent) -> None:
        for callback in list(self._listeners):
            callback(event)

    # -- events ------------------------------------------------------------------------------------

    def _dispatch(self, event: Event) -> None:
        self._store.apply(event)
        if isinstance(event, DelProperty):
            self._fail_watches_on(event)
        elif isinstance(event, Message) and event.device is not None:
            self._log.debug("indi message", device=event.device, message=event.message)
        for w in list(self._watches):
            w.offer(event)
        self._emit(event)

    def _fail_watches_on(self, event: DelProperty) -> None:
        """Fail the watches that depend on what ``event`` deleted, with a message naming it."""
        device = event.device
        if event.name is None:
            error = CameraError(
                f"INDI: device '{device}' disappeared (driver crashed or restarted?)"
            )
            doomed = [w for w in self._watches if w.device == device]
        else:
            error = CameraError(f"INDI: property '{device}.{event.name}' was deleted")
            doomed = [
                w for w in self._watches if w.device == device and event.name in w.properties
            ]
        for w in doomed:
            w.fail(error)
