"""The controller camera: :class:`ControllerCamera` implements the camera interface on the
command/status protocol of reference/controller.md (protocol/controller.md says how phdserver
speaks it).

One capture, step by step: ``header`` commands (``IMAGETYP``, ``EXPTIME``, ``CREATOR`` and the
profile's ``headers``), then ``expose <shutter> <seconds> <fileroot> single`` with the shutter
closed for darks and biases. Over TCP the ``expose`` reply is awaited in a child task while the
main task sleeps the exposure time and polls ``status`` on the status port until no ``EXPOSING``
bit is set (``wait_exp_done``), then waits for the ``expose`` reply, which comes when readout and
transfer are over, and for ``READING``/``FETCHING`` to clear (``wait_camera_readout``). A serial
line carries one command at a time, so there the ``expose`` reply itself ends the wait. The image
is then read from the directory the controller shares with the daemon, once it is complete.

Cancelling the caller's scope, :meth:`ControllerCamera.abort`, or any failure after ``expose``
was sent, sends ``clear`` under a shielded, short ``move_on_after`` (``abort_timeout_s``), so a
cancelled build ends within a second and the controller is left idle. Every failure is a
:class:`~phdserver.errors.CameraError` naming the controller's address and the command, and
saying what went wrong: no reply, an ``[ERROR ...]`` reply, ``cmd_error``, a malformed reply, a
dropped connection, or an image that never appeared.

Sensor size: the profile's ``width``/``height`` when given; else the ``width``/``height`` keys
of the status dict (the simulated controller sends them; the LS4 controller does not); else a
zero-second bias taken at connect, whose image gives the size.

All waits scale with ``time_scale`` (1.0 for hardware), so a simulated controller running
faster than real time can be driven with the same code in tests.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import trio

from phdserver import __version__
from phdserver.cameras.base import (
    CameraInfo,
    CoolerStatus,
    Frame,
    FrameType,
    Subframe,
    capture_problem,
)
from phdserver.cameras.controller._protocol import (
    TIMEOUT_MARGIN_S,
    Command,
    ControllerStatus,
    Reply,
    ReplyKind,
    clear_command,
    expose_command,
    expose_timeout_s,
    header_command,
    status_command,
)
from phdserver.cameras.controller._settings import ControllerSettings, make_transport
from phdserver.cameras.controller._transport import (
    ConnectFailed,
    ImageFile,
    ImageInvalid,
    ImageTimeout,
    LineDropped,
    ReplyTimeout,
    Transport,
    TransportError,
    wait_for_image,
)
from phdserver.errors import CameraError

__all__ = ["ControllerCamera", "ControllerSettings"]

AlertCallback = Callable[[str, str], None]
"""``on_alert(message, severity)`` with severity ``"info"`` or ``"warning"``."""

_FILE_CODES = {FrameType.LIGHT: "s", FrameType.DARK: "d", FrameType.BIAS: "b",
               FrameType.FLAT: "f"}
"""The letter after the time stamp in a fileroot (LS4 uses ``d`` for darks, ``s`` for sky)."""


class ControllerCamera:
    """A camera behind a controller host. No background task: connect and capture directly."""

    def __init__(
        self,
        settings: ControllerSettings,
        *,
        on_alert: AlertCallback | None = None,
        transport: Transport | None = None,
        logger: Any = None,
    ) -> None:
        self.settings = settings
        self._transport = transport if transport is not None else make_transport(settings)
        self._on_alert = on_alert
        base = logger if logger is not None else structlog.get_logger("phdserver.camera")
        self._log = base.bind(camera="controller", controller=self._transport.where)
        self._info: CameraInfo | None = None
        self._connected = False
        self._capturing = False
        self._capture_scope: trio.CancelScope | None = None
        self._generation = 0
        self._last_stamp = 0
        self._image_dir = Path(settings.image_dir).expanduser()

    # -- identity ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def info(self) -> CameraInfo:
        if not self._connected or self._info is None:
            raise CameraError(f"{self.name}: camera not connected")
        return self._info

    @property
    def where(self) -> str:
        """The controller's address (``host:port`` or the serial URL)."""
        return self._transport.where

    # -- connection -------------------------------------------------------------------------------
    async def connect(self) -> None:
        if self._connected:
            await trio.lowlevel.checkpoint()
            return
        directory = self._image_dir
        if not await trio.to_thread.run_sync(directory.is_dir):
            raise CameraError(f"{self.name}: the image directory {directory} does not exist "
                              "(it must be the directory the controller writes its images to)")
        try:
            try:
                await self._transport.open()
            except TransportError as exc:
                raise self._transport_error(status_command(), exc) from None
            status = self._healthy(await self._status(), "")
            width, height = await self._sensor_size(status)
        except BaseException:
            await self._transport.aclose()
            raise
        s = self.settings
        self._info = CameraInfo(name=s.name, width=width, height=height,
                                bits_per_pixel=s.bits_per_pixel, pixel_size_um=s.pixel_size_um,
                                max_binning=1, has_shutter=s.has_shutter, has_cooler=False)
        self._connected = True
        self._log.info("controller connected", width=width, height=height)

    async def _sensor_size(self, status: ControllerStatus) -> tuple[int, int]:
        s = self.settings
        reported = (status.width, status.height)
        if s.width is not None and s.height is not None:
            if None not in reported and reported != (s.width, s.height):
                raise CameraError(f"{self.name}: the profile says {s.width}x{s.height} but the "
                                  f"controller at {self.where} reports "
                                  f"{status.width}x{status.height}")
            return s.width, s.height
        if status.width is not None and status.height is not None:
            return status.width, status.height
        image = await self._expose_and_read(0, FrameType.BIAS, expected=None)
        height, width = image.data.shape
        self._alert(f"{self.name}: sensor size {width}x{height} learned from a bias frame; "
                    "set width and height in the profile to skip it", "info")
        return width, height

    async def disconnect(self) -> None:
        self._connected = False
        self._generation += 1
        if self._capture_scope is not None:
            self._capture_scope.cancel()
        await self._transport.aclose()

    # -- capture ----------------------------------------------------------------------------------
    async def capture(
        self,
        exposure_ms: int,
        *,
        frame_type: FrameType = FrameType.LIGHT,
        binning: int = 1,
        gain: int | None = None,
        subframe: Subframe | None = None,
    ) -> Frame:
        """One exposure through the controller (see the module docstring). ``gain`` is not
        something the protocol can set and is ignored; binning must be 1."""
        await trio.lowlevel.checkpoint()
        info = self.info
        self._validate(info, exposure_ms, binning, subframe)
        if self._capturing:
            raise CameraError(f"{self.name}: an exposure is already in progress")
        self._capturing = True
        generation = self._generation
        started = time.time()
        try:
            with trio.CancelScope() as scope:
                self._capture_scope = scope
                image = await self._expose_and_read(exposure_ms, frame_type,
                                                    expected=(info.height, info.width))
            if scope.cancelled_caught:
                if generation != self._generation:
                    raise CameraError(f"{self.name}: camera disconnected during the exposure")
                raise CameraError(f"{self.name}: exposure aborted")
        finally:
            self._capturing = False
            self._capture_scope = None
        data = image.data
        if subframe is not None:
            data = data[subframe.y : subframe.y + subframe.height,
                        subframe.x : subframe.x + subframe.width].copy()
        headers = {k: v for k, v in image.header.items() if isinstance(v, str | int | float)}
        return Frame(data=data, exposure_ms=exposure_ms, frame_type=frame_type, binning=1,
                     timestamp=started, subframe=subframe, headers=headers)

    def _validate(self, info: CameraInfo, exposure_ms: int, binning: int,
                  subframe: Subframe | None) -> None:
        problem = capture_problem(width=info.width, height=info.height, max_binning=1,
                                  exposure_ms=exposure_ms, binning=binning, subframe=subframe)
        if problem is not None:
            if binning != 1:
                problem += "; the controller protocol has no binning"
            raise CameraError(f"{self.name}: {problem}")

    async def abort(self) -> None:
        """Abort the exposure in progress: its capture sends ``clear`` and raises CameraError."""
        await trio.lowlevel.checkpoint()
        if self._capture_scope is not None:
            self._capture_scope.cancel()

    async def _expose_and_read(self, exposure_ms: int, frame_type: FrameType,
                               expected: tuple[int, int] | None) -> ImageFile:
        s = self.settings
        exposure_s = exposure_ms / 1000.0
        fileroot, path = await trio.to_thread.run_sync(self._new_fileroot, frame_type)
        for command in self._header_commands(frame_type, exposure_s):
            await self._request(command, s.scaled(s.timeout_s))
        expose = expose_command(shutter_open=not frame_type.is_dark, exposure_s=exposure_s,
                                fileroot=fileroot)
        finished = False
        try:
            if self._transport.concurrent:
                await self._expose_polling(expose, exposure_s)
            else:
                await self._expose_waiting(expose, exposure_s)
            finished = True
        finally:
            if not finished:
                await self._clear_quietly()
        image = await self._read_image(path, expose)
        if expected is not None and image.data.shape != expected:
            raise CameraError(f"{self.name}: image {path} is {image.data.shape[1]}x"
                              f"{image.data.shape[0]}, expected {expected[1]}x{expected[0]}")
        if not s.keep_images:
            await trio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
        return image

    def _new_fileroot(self, frame_type: FrameType) -> tuple[str, Path]:
        """``yyyymmddHHMMSS`` (UTC) + a letter, one second after the last one at least, and
        never the name of an image already in the directory (a stale file is never read)."""
        s = self.settings
        directory = self._image_dir
        stamp = max(int(time.time()), self._last_stamp + 1)
        while True:
            fileroot = time.strftime("%Y%m%d%H%M%S", time.gmtime(stamp)) + _FILE_CODES[frame_type]
            path = directory / s.image_name.format(fileroot=fileroot)
            if not path.exists():
                self._last_stamp = stamp
                return fileroot, path
            stamp += 1

    def _header_commands(self, frame_type: FrameType, exposure_s: float) -> list[Command]:
        words: dict[str, str | int | float | bool] = {
            "IMAGETYP": frame_type.value,
            "EXPTIME": f"{exposure_s:.3f}",
            "CREATOR": f"phdserver {__version__}",
        }
        words.update(self.settings.headers)
        return [header_command(key, value) for key, value in words.items()]

    async def _expose_polling(self, expose: Command, exposure_s: float) -> None:
        """TCP: the expose reply in a child task, status polls in this one."""
        s = self.settings
        timeout = s.scaled(expose_timeout_s("single", exposure_s, readout_s=s.readout_time_s,
                                            transfer_s=s.transfer_time_s))
        answered = trio.Event()
        result: list[Reply | TransportError] = []

        async def send_expose() -> None:
            try:
                result.append(await self._transport.request(expose, timeout_s=timeout))
            except TransportError as exc:
                result.append(exc)
            answered.set()

        error: CameraError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_expose)
            try:
                await self._wait_exposure_end(exposure_s, answered)
                with trio.move_on_after(s.scaled(s.readout_time_s)):
                    await answered.wait()
                if not answered.is_set():
                    error = CameraError(
                        f"{self.name}: the controller at {self.where} did not answer 'expose': "
                        f"no reply within {s.scaled(s.readout_time_s):.3g} s after the "
                        "exposure ended (readout)")
            except CameraError as exc:
                error = exc
            nursery.cancel_scope.cancel()
        if error is not None:
            raise error
        self._check(expose, result[0])
        await self._wait_readout_end()

    async def _expose_waiting(self, expose: Command, exposure_s: float) -> None:
        """Serial: one command at a time, so the expose reply (after readout) ends the wait."""
        s = self.settings
        timeout = s.scaled(expose_timeout_s("single", exposure_s, readout_s=s.readout_time_s,
                                            transfer_s=s.transfer_time_s))
        await self._request(expose, timeout)
        await self._wait_readout_end()

    async def _wait_exposure_end(self, exposure_s: float, answered: trio.Event) -> None:
        """``wait_exp_done``: sleep the exposure, then poll until no EXPOSING bit is set."""
        s = self.settings
        with trio.move_on_after(s.scaled(exposure_s)):
            await answered.wait()  # an early reply (an error) ends the wait at once
        deadline = trio.current_time() + s.scaled(exposure_s + TIMEOUT_MARGIN_S)
        while not answered.is_set():
            status = self._healthy(await self._status(), " during the exposure")
            if not status.exposing:
                return
            if trio.current_time() >= deadline:
                raise CameraError(f"{self.name}: the controller at {self.where} was still "
                                  f"exposing {s.scaled(exposure_s + TIMEOUT_MARGIN_S):.3g} s "
                                  "after the exposure should have ended")
            await trio.sleep(s.scaled(s.poll_interval_s))

    async def _wait_readout_end(self) -> None:
        """``wait_camera_readout``: READING and FETCHING clear (normally at once, since the
        expose reply comes after readout)."""
        s = self.settings
        deadline = trio.current_time() + s.scaled(s.readout_time_s)
        while True:
            status = self._healthy(await self._status(), " after readout")
            if not status.reading_out and not status.exposing:
                return
            if trio.current_time() >= deadline:
                raise CameraError(f"{self.name}: the controller at {self.where} was still "
                                  f"reading out after {s.scaled(s.readout_time_s):.3g} s")
            await trio.sleep(s.scaled(s.poll_interval_s))

    async def _read_image(self, path: Path, expose: Command) -> ImageFile:
        s = self.settings
        try:
            return await wait_for_image(path, timeout_s=s.scaled(s.image_timeout_s),
                                        poll_s=s.scaled(s.poll_interval_s))
        except (ImageTimeout, ImageInvalid) as exc:
            raise CameraError(f"{self.name}: no usable image after '{expose.verb}' on the "
                              f"controller at {self.where}: {exc.reason}") from None

    async def _clear_quietly(self) -> None:
        """Stop whatever the controller is doing; bounded, shielded, never raises."""
        s = self.settings
        with trio.CancelScope(shield=True), trio.move_on_after(s.abort_timeout_s):
            try:
                await self._request(clear_command(s.clear_time_s),
                                    s.scaled(s.clear_time_s + TIMEOUT_MARGIN_S))
            except CameraError as exc:
                self._log.warning("clear failed", error=exc.message)

    # -- commands ---------------------------------------------------------------------------------
    async def _status(self) -> ControllerStatus:
        s = self.settings
        command = status_command()
        reply = await self._request(command, s.scaled(s.timeout_s), status_channel=True)
        if reply.status is None:
            raise CameraError(f"{self.name}: malformed reply to 'status' from the controller at "
                              f"{self.where}: no status dict in {reply.text[:80]!r}")
        return reply.status

    def _healthy(self, status: ControllerStatus, when: str) -> ControllerStatus:
        """``status``, unless the controller says it is in error (``'error': True``)."""
        if status.error:
            reason = status.comment or status.state or "no reason given"
            raise CameraError(f"{self.name}: the controller at {self.where} reports an "
                              f"error{when}: {reason}")
        return status

    async def _request(self, command: Command, timeout_s: float, *,
                       status_channel: bool = False) -> Reply:
        try:
            reply = await self._transport.request(command, timeout_s=timeout_s,
                                                  status_channel=status_channel)
        except TransportError as exc:
            raise self._transport_error(command, exc) from None
        return self._check(command, reply)

    def _check(self, command: Command, reply: Reply | TransportError) -> Reply:
        """The reply if it is DONE; otherwise the CameraError that says what went wrong."""
        if isinstance(reply, TransportError):
            raise self._transport_error(command, reply)
        where, verb = self.where, command.verb
        if reply.kind is ReplyKind.DONE:
            return reply
        if reply.kind is ReplyKind.ERROR:
            message = f"the controller at {where} replied ERROR to '{verb}': {reply.detail}"
        elif reply.kind is ReplyKind.CMD_ERROR:
            message = f"'{verb}' failed on the controller at {where} (cmd_error): {reply.detail}"
        elif reply.kind is ReplyKind.DROPPED:
            message = f"the connection to the controller at {where} dropped during '{verb}': "
            message += reply.detail
        else:
            message = f"malformed reply to '{verb}' from the controller at {where}: "
            message += reply.detail
        raise CameraError(f"{self.name}: {message}")

    def _transport_error(self, command: Command, exc: TransportError) -> CameraError:
        where, verb = self.where, command.verb
        if isinstance(exc, ReplyTimeout):
            message = f"the controller at {where} did not answer '{verb}': {exc.reason}"
        elif isinstance(exc, ConnectFailed):
            message = f"cannot reach the controller for '{verb}': {exc.reason}"
        elif isinstance(exc, LineDropped):
            message = f"the connection to the controller at {where} dropped during '{verb}': "
            message += exc.reason
        else:
            message = f"'{verb}' failed: {exc.reason}"
        return CameraError(f"{self.name}: {message}")

    def _alert(self, message: str, severity: str) -> None:
        if self._on_alert is not None:
            with contextlib.suppress(Exception):
                self._on_alert(message, severity)

    # -- cooler -----------------------------------------------------------------------------------
    async def cooler_status(self) -> CoolerStatus:
        await trio.lowlevel.checkpoint()
        raise CameraError(f"{self.name}: the controller protocol reports no sensor temperature")

    async def set_cooler(self, enabled: bool, setpoint_c: float | None = None) -> None:
        await trio.lowlevel.checkpoint()
        raise CameraError(f"{self.name}: camera has no cooler")
