"""Getting commands to the controller and replies and images back: TCP, a serial line, a directory.

**TCP** (as LS4): one connection per command on the command port (5000) or the status port
(5001): connect, send, read the reply (see :class:`~._protocol.ReplyFramer`), close. Each port
then rests ``delay_s`` (0.1 s, ``COMMAND_DELAY_USEC``) before its next command. An ``expose`` on
the command port and ``status`` polls on the status port run side by side.

**Serial** (phdserver's addition): one persistent line opened with pyserial's
``serial_for_url``, so a device path, ``socket://host:port`` or a pty all work. One command and
one reply line at a time, in order. pyserial is blocking, so reads run in trio worker threads:
each read waits at most ``read_poll_s`` (the port's own timeout), holds a thread lock, and
appends what it got to a shared buffer, so a read abandoned by a cancelled caller loses no byte
and the next reader continues where it stopped. (trio's ``FdStream`` would avoid the threads but
works only for file descriptors; ``socket://`` and other pyserial URL handlers have none.)

The line stays in step by counting replies owed: a command whose caller was cancelled (the
capture aborted) still gets its reply later, and that reply is dropped before the next command's
is read. After a *timeout* nobody knows whether a reply will still come; the line then forgets
what it owed and any partial line, so a silent controller that comes back is usable at once (a
very late reply could then be taken for the next command's: the camera's image checks catch it).

**Images**: :func:`wait_for_image` polls the directory the controller shares with the daemon
until the file named for the exposure is a complete FITS file (its size reaches what its headers
announce) and checks it is a single 2-D image.

Errors are :class:`TransportError` subclasses carrying a reason; the camera turns them into
:class:`~phdserver.errors.CameraError` messages naming the controller and the command.
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import serial
import trio
from astropy.io import fits

from phdserver.cameras.controller._protocol import (
    Command,
    LineFramer,
    Reply,
    ReplyFramer,
)

__all__ = [
    "ConnectFailed",
    "ImageFile",
    "ImageInvalid",
    "ImageTimeout",
    "LineDropped",
    "ReplyTimeout",
    "SerialTransport",
    "TcpTransport",
    "Transport",
    "TransportError",
    "read_fits_image",
    "wait_for_image",
]

_CHUNK = 4096


class TransportError(Exception):
    """A command got no usable reply for a reason below the protocol (no connection...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConnectFailed(TransportError):
    """The controller could not be reached (refused, unknown host, no such serial device)."""


class ReplyTimeout(TransportError):
    """No complete reply within the timeout."""


class LineDropped(TransportError):
    """The connection or line failed while a reply was due."""


class Transport(Protocol):
    """What the camera needs from a link to the controller."""

    @property
    def where(self) -> str:
        """The controller's address for messages: ``host:port`` or the serial URL."""
        ...

    @property
    def concurrent(self) -> bool:
        """True when ``status`` can be polled while an ``expose`` reply is pending."""
        ...

    async def open(self) -> None: ...

    async def aclose(self) -> None: ...

    async def request(self, command: Command, *, timeout_s: float,
                      status_channel: bool = False) -> Reply:
        """Send ``command`` and return its reply (which may be an ERROR, MALFORMED... reply).

        Raises :class:`TransportError` when no reply could be had at all.
        """
        ...


def _seconds(value: float) -> str:
    return f"{value:.3g} s"


class TcpTransport:
    """One TCP connection per command; see the module docstring."""

    def __init__(self, host: str, port: int, status_port: int | None, *,
                 delay_s: float) -> None:
        self._host = host
        self._ports = (port, status_port if status_port else port)
        self._delay = delay_s
        self._ready_at: dict[int, float] = {}

    @property
    def where(self) -> str:
        return f"{self._host}:{self._ports[0]}"

    @property
    def concurrent(self) -> bool:
        """Only with a status port: a controller without one (LS4's ``status_channel_active``
        off) is asked for status on the command port, one command at a time."""
        return self._ports[1] != self._ports[0]

    async def open(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()

    async def request(self, command: Command, *, timeout_s: float,
                      status_channel: bool = False) -> Reply:
        port = self._ports[1] if status_channel else self._ports[0]
        await trio.sleep_until(self._ready_at.get(port, -math.inf))
        framer = ReplyFramer()
        connected = False
        try:
            with trio.fail_after(timeout_s):
                try:
                    stream = await trio.open_tcp_stream(self._host, port)
                except OSError as exc:
                    raise ConnectFailed(f"cannot connect to {self._host}:{port}: "
                                        f"{exc.strerror or exc}") from None
                connected = True
                async with stream:
                    await stream.send_all(command.wire())
                    while True:
                        chunk = await stream.receive_some(_CHUNK)
                        if not chunk:
                            return framer.eof()
                        reply = framer.feed(chunk)
                        if reply is not None:
                            return reply
        except trio.TooSlowError:
            if not connected:
                raise ReplyTimeout(f"could not connect to {self._host}:{port} within "
                                   f"{_seconds(timeout_s)}") from None
            got = f" ({len(framer)} bytes of it received)" if len(framer) else ""
            raise ReplyTimeout(f"no reply within {_seconds(timeout_s)}{got}") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            raise LineDropped(f"the connection to {self._host}:{port} failed: {cause}") from None
        finally:
            self._ready_at[port] = trio.current_time() + self._delay


class SerialTransport:
    """One persistent serial line through pyserial; see the module docstring."""

    def __init__(self, url: str, *, baudrate: int, delay_s: float,
                 read_poll_s: float = 0.05) -> None:
        self._url = url
        self._baudrate = baudrate
        self._delay = delay_s
        self._poll = read_poll_s
        self._port: Any = None
        self._framer = LineFramer()
        self._buf_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._failure: BaseException | None = None
        self._lock = trio.Lock()
        self._owed = 0
        self._ready_at = -math.inf
        self._wanted = False
        """Between open() and aclose(): a line lost in between is reopened by the next command."""

    @property
    def where(self) -> str:
        return self._url

    @property
    def concurrent(self) -> bool:
        return False

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def _open_port(self) -> Any:
        try:
            port = serial.serial_for_url(self._url, baudrate=self._baudrate,
                                         timeout=self._poll, write_timeout=5.0)
            port.reset_input_buffer()
        except (serial.SerialException, OSError, ValueError) as exc:
            raise ConnectFailed(f"cannot open serial line {self._url}: {exc}") from None
        return port

    async def open(self) -> None:
        self._wanted = True
        if self._port is not None:
            await trio.lowlevel.checkpoint()
            return
        port = await trio.to_thread.run_sync(self._open_port)
        with self._buf_lock:
            self._framer.reset()
        self._failure = None
        self._owed = 0
        self._port = port

    async def aclose(self) -> None:
        self._wanted = False
        await self._drop_port()

    async def _drop_port(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._close_port, port)
        else:
            await trio.lowlevel.checkpoint()

    def _close_port(self, port: Any) -> None:
        # The lock waits out a reader (at most one poll interval).
        with self._read_lock, contextlib.suppress(serial.SerialException, OSError):
            port.close()

    def _write(self, port: Any, data: bytes) -> None:
        port.write(data)
        port.flush()

    def _fill(self, port: Any) -> None:
        """Worker thread: wait up to one poll interval for bytes and buffer them."""
        with self._read_lock:
            if self._port is not port or self._failure is not None:
                return
            try:
                # One call per line, not per byte: in_waiting is only 0 or 1 for socket://.
                data = port.read_until(b"\n", _CHUNK)
            except Exception as exc:  # SerialException, OSError, or a port closed under us
                self._failure = exc
                return
            if data:
                with self._buf_lock:
                    self._framer.feed(data)

    def _take_reply(self) -> Reply | None:
        with self._buf_lock:
            return self._framer.next_reply()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise LineDropped(f"the serial line {self._url} failed: {self._failure}")

    async def request(self, command: Command, *, timeout_s: float,
                      status_channel: bool = False) -> Reply:
        async with self._lock:
            await trio.sleep_until(self._ready_at)
            try:
                return await self._exchange(command, timeout_s)
            finally:
                self._ready_at = trio.current_time() + self._delay

    async def _exchange(self, command: Command, timeout_s: float) -> Reply:
        if self._port is None:
            if not self._wanted:
                raise LineDropped(f"the serial line {self._url} is closed")
            await self.open()
        port = self._port
        try:
            with trio.fail_after(timeout_s):
                self._owed += 1  # before writing: a cancelled write may still reach the line
                await trio.to_thread.run_sync(self._write, port, command.wire())
                while True:
                    reply = self._take_reply()
                    if reply is None:
                        await trio.to_thread.run_sync(self._fill, port, abandon_on_cancel=True)
                        self._raise_if_failed()
                        continue
                    self._owed -= 1
                    if self._owed <= 0:
                        self._owed = 0
                        return reply
        except trio.TooSlowError:
            with self._buf_lock:
                partial = self._framer.pending
                self._framer.reset()
            self._owed = 0
            if partial:
                raise LineDropped(f"the line went quiet in the middle of the reply "
                                  f"({partial} bytes of it received)") from None
            raise ReplyTimeout(f"no reply within {_seconds(timeout_s)}") from None
        except LineDropped:
            await self._drop_port()
            raise
        except (serial.SerialException, OSError) as exc:
            await self._drop_port()
            raise LineDropped(f"the serial line {self._url} failed: {exc}") from None


# -- images --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class ImageFile:
    data: np.ndarray
    """2-D ``uint16``, ``data[y, x]``."""
    header: dict[str, object] = field(default_factory=dict)


class ImageNotReady(Exception):
    """The file is missing or not complete yet (the reason says which)."""


class ImageInvalid(TransportError):
    """The file is complete but is not a usable image."""


class ImageTimeout(TransportError):
    """The file did not become a complete image in time."""


_STRUCTURAL = frozenset({"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BZERO",
                         "BSCALE", "PCOUNT", "GCOUNT", "XTENSION", "END", "", "COMMENT",
                         "HISTORY", "CHECKSUM", "DATASUM"})


def _as_uint16(raw: np.ndarray) -> np.ndarray:
    if raw.dtype == np.uint16 and raw.dtype.isnative:
        return np.ascontiguousarray(raw)
    if raw.dtype.kind == "f":
        raw = np.nan_to_num(np.rint(raw), nan=0.0, posinf=65535.0, neginf=0.0)
    return np.clip(raw, 0, 65535).astype(np.uint16)


def read_fits_image(path: Path) -> ImageFile:
    """Read a controller's FITS image (blocking: run it in a worker thread).

    Raises ``ImageNotReady`` while the file is missing, shorter than its headers announce or
    unparsable (a header still being written), and :class:`ImageInvalid` for a complete file
    that is not exactly one 2-D image.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageNotReady("it does not exist") from None
    except OSError as exc:
        raise ImageNotReady(f"it cannot be read ({exc.strerror})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(io.BytesIO(raw), memmap=False, lazy_load_hdus=False) as hdul:
                return _single_image(hdul, len(raw))
    except (ImageNotReady, ImageInvalid):
        raise
    except Exception as exc:  # astropy raises many types for a header still being written
        raise ImageNotReady(f"it is not a readable FITS file yet ({exc})") from None


def _single_image(hdul: fits.HDUList, size: int) -> ImageFile:
    info = hdul.fileinfo(len(hdul) - 1)
    end = int(info["datLoc"]) + int(info["datSpan"])
    if size < end:
        raise ImageNotReady(f"it is incomplete ({size} of {end} bytes)")
    images = [h for h in hdul if h.header.get("NAXIS", 0) > 0]
    if len(images) != 1 or images[0].header.get("NAXIS") != 2:
        shapes = [tuple(h.shape) for h in images]
        raise ImageInvalid(f"it is not a single 2-D image (image HDUs: {shapes})")
    hdu = images[0]
    data = _as_uint16(np.asarray(hdu.data))
    header = {k: v for k, v in hdu.header.items()
              if k not in _STRUCTURAL and not k.startswith("NAXIS")}
    return ImageFile(data=data, header=header)


async def wait_for_image(path: Path, *, timeout_s: float, poll_s: float) -> ImageFile:
    """Poll ``path`` until it is a complete FITS image; :class:`ImageTimeout` after
    ``timeout_s`` saying what was last wrong, :class:`ImageInvalid` at once for a bad image."""
    deadline = trio.current_time() + timeout_s
    while True:
        try:
            return await trio.to_thread.run_sync(read_fits_image, path)
        except ImageNotReady as exc:
            reason = str(exc)
        if trio.current_time() >= deadline:
            raise ImageTimeout(f"image {path} was not ready within {_seconds(timeout_s)}: "
                               f"{reason}")
        await trio.sleep(poll_s)
