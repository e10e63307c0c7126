"""The INDI camera backend: :class:`IndiCamera` implements :class:`~phdserver.cameras.base.Camera`
on top of :class:`~phdserver.cameras.indi._client.IndiClient`.

Running it. The camera owns a background task (the INDI connection, its reconnect loop and a
supervisor that re-arms the device after a restart). A :class:`Camera` has no nursery parameter,
so the app starts that task in its own nursery before connecting::

    camera = IndiCamera(IndiSettings(device="CCD Simulator"), on_alert=app.alert)
    await nursery.start(camera.run)      # returns at once; the link comes up in the background
    await camera.connect()               # raises CameraError if the server or device is missing

:meth:`IndiCamera.connect` raises ``RuntimeError`` when :meth:`IndiCamera.run` is not running.
Cancelling the nursery stops everything.

Connecting waits for the device, sends ``CONNECTION.CONNECT=On``, waits for ``<P>EXPOSURE``, the
chip's BLOB and ``<P>INFO`` (``<P>`` is ``CCD_`` or ``GUIDER_``), forces ``UPLOAD_MODE`` to
``UPLOAD_CLIENT``, compression off and FITS transfer where those properties exist, and sends
``enableBLOB Also`` for the chip's BLOB (``CCD1``/``CCD2``).

Recovery. A lost server or a vanished device (a driver crash makes indiserver send a whole-device
``delProperty``) fails the running capture at once, marks the camera disconnected and raises an
alert. When the device is defined again, the camera re-arms it by itself (CONNECT, enableBLOB,
UPLOAD_MODE) and says "INDI: reconnected to '<device>'". If another INDI client disconnects the
device, the camera only reports it and does not fight back.

Shutter: INDI has no standard property saying whether a camera has a mechanical shutter, so
``has_shutter`` is always False and the app asks the user to cover the scope. Darks are still
requested as ``FRAME_DARK`` (which closes the shutter on cameras that have one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable

import numpy as np
import structlog
import trio

from phdserver.cameras.base import CameraInfo, CoolerStatus, Frame, FrameType, Subframe
from phdserver.cameras.indi._arm import arm_device, send_switch_if_present
from phdserver.cameras.indi._blob import decode_image
from phdserver.cameras.indi._client import (
    ClientEvent,
    IndiClient,
    LinkDown,
    OpenStream,
)
from phdserver.cameras.indi._settings import IndiSettings
from phdserver.cameras.indi._xml import DefVector, DelProperty, Event, SetVector
from phdserver.errors import CameraError, Refused

__all__ = ["IndiCamera", "IndiSettings"]

AlertCallback = Callable[[str, str], None]
"""``on_alert(message, severity)`` with severity ``"info"`` or ``"warning"``."""

_FRAME_TYPES = {
    FrameType.LIGHT: "FRAME_LIGHT",
    FrameType.DARK: "FRAME_DARK",
    FrameType.BIAS: "FRAME_BIAS",
    FrameType.FLAT: "FRAME_FLAT",
}


class IndiCamera:
    """A camera behind indiserver. See the module docstring for how to run it."""

    def __init__(
        self,
        settings: IndiSettings,
        *,
        on_alert: AlertCallback | None = None,
        open_stream: OpenStream | None = None,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self.settings = settings
        base = logger if logger is not None else structlog.get_logger("phdserver.camera")
        self._log = base.bind(camera="indi", device=settings.device)
        self._client = IndiClient(
            settings.host, settings.port, open_stream=open_stream,
            connect_timeout=min(settings.connect_timeout_s, 10.0), logger=base,
        )
        self._on_alert = on_alert
        self._running = False
        self._want = False
        self._ready = False
        self._lost = False
        self._exposing = False
        self._info: CameraInfo | None = None
        self._setpoint: float | None = None
        self._kick = trio.Event()
        self._arm_lock = trio.Lock()
        self._decode_limiter = trio.CapacityLimiter(1)

    # -- Camera properties ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"INDI Camera [{self.settings.device}]"

    @property
    def connected(self) -> bool:
        return self._ready and self._client.connected

    @property
    def info(self) -> CameraInfo:
        self._require_connected()
        assert self._info is not None
        return self._info

    @property
    def client(self) -> IndiClient:
        """The underlying INDI connection (for diagnostics and tests)."""
        return self._client

    # -- lifecycle --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The camera's background task: the INDI link and the re-arming supervisor."""
        if self._running:
            raise RuntimeError("IndiCamera.run() is already running")
        remove = self._client.add_listener(self._on_client_event)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._client.run)
                nursery.start_soon(self._supervise)
                self._running = True
                task_status.started()
        finally:
            self._running = False
            self._ready = False
            remove()

    async def connect(self) -> None:
        if not self._running:
            raise RuntimeError(
                "IndiCamera.run() is not running: start it first with "
                "`await nursery.start(camera.run)`"
            )
        if self.connected:
            await trio.lowlevel.checkpoint()
            return
        reconnecting = self._want and self._lost  # a failure here must not stop that
        self._want = True
        try:
            await self._client.wait_link(timeout_s=self.settings.connect_timeout_s)
            async with self._arm_lock:
                if not self.connected:
                    self._info = await arm_device(self._client, self.settings, self.name,
                                                  self.settings.connect_timeout_s)
                    self._ready = True
        except BaseException:
            self._want = reconnecting
            raise
        self._lost = False
        info = self.info
        self._log.info("indi camera connected", width=info.width, height=info.height)

    async def disconnect(self) -> None:
        """Stop using the device (it stays connected in INDI for other clients)."""
        self._want = self._lost = False
        was_ready, self._ready = self._ready, False
        if was_ready and self._client.connected:
            with trio.move_on_after(1), contextlib.suppress(CameraError):
                await self._client.enable_blob(self.settings.device, self.settings.blob, "Never")
        await trio.lowlevel.checkpoint()

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
        info = self.info
        s, dev, c = self.settings, self.settings.device, self._client
        self._validate(info, exposure_ms, binning, subframe)
        if self._exposing:
            raise CameraError(f"INDI: an exposure is already in progress on '{dev}'")
        p, exposure_prop = s.prefix, f"{s.prefix}EXPOSURE"
        seconds = self._exposure_seconds(exposure_ms)
        self._exposing = True
        sent = received = False
        try:
            await send_switch_if_present(c, dev, f"{p}FRAME_TYPE", _FRAME_TYPES[frame_type])
            if c.property(dev, f"{p}BINNING") is not None:
                bins = {"HOR_BIN": binning, "VER_BIN": binning}
                await c.send_new_number(dev, f"{p}BINNING", bins)
            if c.property(dev, f"{p}FRAME") is not None:
                await c.send_new_number(dev, f"{p}FRAME", _indi_frame(info, binning, subframe))
            if gain is not None and c.property(dev, "CCD_GAIN") is not None:
                await c.send_new_number(dev, "CCD_GAIN", {"GAIN": gain})
            timeout = seconds + s.timeout_s

            def answer(ev: Event) -> bool:
                if not isinstance(ev, SetVector) or ev.device != dev:
                    return False
                if ev.name == s.blob:
                    return any(isinstance(e.value, bytes | bytearray) and e.value
                               for e in ev.elements.values())
                return ev.name == exposure_prop and ev.state == "Alert"

            with c.watch(answer, device=dev, properties=(exposure_prop, s.blob)) as w:
                started = time.time()
                sent = True
                await c.send_new_number(dev, exposure_prop, {f"{exposure_prop}_VALUE": seconds})
                what = f"the image from '{dev}' ({seconds:g} s exposure + {s.timeout_s:g} s)"
                event = await w.wait(timeout_s=timeout, what=what)
            received = True
            assert isinstance(event, SetVector)
            if event.name == exposure_prop:
                detail = c.last_message(dev)
                raise CameraError(
                    f"INDI: '{dev}' reported a failed exposure" + (f": {detail}" if detail else "")
                )
            blob = next(e for e in event.elements.values() if e.value)
            assert isinstance(blob.value, bytes | bytearray)
            decoded = await trio.to_thread.run_sync(
                functools.partial(decode_image, blob.value, blob.format or ".fits", device=dev),
                limiter=self._decode_limiter,
            )
        finally:
            self._exposing = False
            if sent and not received:
                await self._abort_shielded()
        if decoded.bits_per_pixel == 8 and info.bits_per_pixel != 8 and self._info is not None:
            self._info = dataclasses.replace(self._info, bits_per_pixel=8)
        return self._frame(decoded.data, decoded.header, exposure_ms, frame_type, binning, gain,
                           subframe, started)

    def _frame(
        self,
        data: np.ndarray,
        header: dict[str, object],
        exposure_ms: int,
        frame_type: FrameType,
        binning: int,
        gain: int | None,
        subframe: Subframe | None,
        started: float,
    ) -> Frame:
        c, dev = self._client, self.settings.device
        temperature = _float_or_none(header.get("CCD-TEMP"))
        if temperature is None and (t := c.property(dev, "CCD_TEMPERATURE")) is not None:
            temperature = t.number("CCD_TEMPERATURE_VALUE")
        if gain is None and (g := c.property(dev, "CCD_GAIN")) is not None:
            value = g.number("GAIN")
            gain = None if value is None else round(value)
        offset_prop = c.property(dev, "CCD_OFFSET")
        offset = offset_prop.number("OFFSET") if offset_prop is not None else None
        return Frame(
            data=data, exposure_ms=exposure_ms, frame_type=frame_type, binning=binning,
            gain=gain, offset=None if offset is None else round(offset),
            temperature_c=temperature, timestamp=started, subframe=subframe, headers=header,
        )

    async def abort(self) -> None:
        if self._exposing and self._client.connected:
            await self._abort_shielded()
        else:
            await trio.lowlevel.checkpoint()

    async def _abort_shielded(self) -> None:
        s = self.settings
        # if the link is gone there is nothing to abort
        with trio.move_on_after(1, shield=True), contextlib.suppress(CameraError):
            await self._client.send_new_switch(
                s.device, f"{s.prefix}ABORT_EXPOSURE", {"ABORT": True}
            )

    # -- cooler -----------------------------------------------------------------------------------

    async def cooler_status(self) -> CoolerStatus:
        self._require_connected()
        c, dev = self._client, self.settings.device
        sensor = c.property(dev, "CCD_TEMPERATURE")
        temperature = sensor.number("CCD_TEMPERATURE_VALUE") if sensor is not None else None
        if temperature is None:
            raise CameraError(f"INDI: '{dev}' has no temperature sensor")
        cooler = c.property(dev, "CCD_COOLER")
        on = bool(cooler.switch("COOLER_ON")) if cooler is not None else self._setpoint is not None
        power = c.property(dev, "CCD_COOLER_POWER")
        await trio.lowlevel.checkpoint()
        return CoolerStatus(
            temperature_c=temperature, cooler_on=on,
            setpoint_c=self._setpoint if on else None,
            power_percent=power.number("CCD_COOLER_VALUE") if power is not None else None,
        )

    async def set_cooler(self, enabled: bool, setpoint_c: float | None = None) -> None:
        if not self.info.has_cooler:
            raise Refused(f"INDI: '{self.settings.device}' has no cooler")
        c, dev = self._client, self.settings.device
        if enabled:
            await send_switch_if_present(c, dev, "CCD_COOLER", "COOLER_ON")
            if setpoint_c is not None:
                target = {"CCD_TEMPERATURE_VALUE": setpoint_c}
                await c.send_new_number(dev, "CCD_TEMPERATURE", target)
                self._setpoint = setpoint_c
        else:
            await send_switch_if_present(c, dev, "CCD_COOLER", "COOLER_OFF")
            self._setpoint = None

    # -- recovery ---------------------------------------------------------------------------------

    def _on_client_event(self, event: ClientEvent) -> None:
        dev = self.settings.device
        if isinstance(event, LinkDown) and event.stopped:
            self._ready = False
        elif isinstance(event, LinkDown):
            self._lose(f"INDI: connection to indiserver at {event.address} lost ({event.reason})")
        elif isinstance(event, DelProperty) and event.device == dev and event.name is None:
            self._lose(f"INDI: device '{dev}' disappeared (driver crashed or restarted?)")
        elif isinstance(event, DefVector) and event.device == dev and event.name == "CONNECTION":
            if self._want and self._lost and not self._ready:
                self._kick.set()
        elif isinstance(event, SetVector) and event.device == dev and event.name == "CONNECTION":
            conn = self._client.property(dev, "CONNECTION")
            if self._ready and conn is not None and conn.switch("CONNECT") is False:
                self._ready = self._want = False
                self._alert(f"INDI: '{dev}' was disconnected by another INDI client", "warning")

    def _lose(self, message: str) -> None:
        if self._ready:
            self._ready = False
            self._lost = True
            self._alert(message + "; reconnecting", "warning")

    async def _supervise(self) -> None:
        dev = self.settings.device
        while True:
            await self._kick.wait()
            self._kick = trio.Event()
            async with self._arm_lock:
                present = self._client.property(dev, "CONNECTION") is not None
                if not (self._want and self._lost and present) or self._ready:
                    continue
                try:
                    self._info = await arm_device(self._client, self.settings, self.name,
                                                  self.settings.connect_timeout_s)
                    self._ready = True
                except CameraError as exc:
                    self._alert(f"INDI: could not reconnect to '{dev}': {exc.message}", "warning")
                    continue
            self._lost = False
            self._alert(f"INDI: reconnected to '{dev}'", "info")

    def _alert(self, message: str, severity: str) -> None:
        if severity == "warning":
            self._log.warning(message)
        else:
            self._log.info(message)
        if self._on_alert is not None:
            self._on_alert(message, severity)

    # -- helpers ----------------------------------------------------------------------------------

    def _require_connected(self) -> None:
        if not self.connected or self._info is None:
            state = " (reconnecting)" if self._want and self._lost else ""
            raise CameraError(f"INDI: camera '{self.settings.device}' is not connected{state}")

    def _exposure_seconds(self, exposure_ms: int) -> float:
        """The exposure in seconds, raised to the driver's minimum (a 0 ms bias is legal)."""
        s = self.settings
        prop = self._client.property(s.device, f"{s.prefix}EXPOSURE")
        el = prop.elements.get(f"{s.prefix}EXPOSURE_VALUE") if prop is not None else None
        seconds = exposure_ms / 1000.0
        if el is not None and el.min is not None and seconds < el.min:
            seconds = el.min
        return seconds

    def _validate(
        self, info: CameraInfo, exposure_ms: int, binning: int, subframe: Subframe | None
    ) -> None:
        dev = self.settings.device
        if exposure_ms < 0:
            raise CameraError(f"INDI: exposure must be >= 0 ms, got {exposure_ms}")
        if not 1 <= binning <= info.max_binning:
            raise CameraError(
                f"INDI: binning {binning} not supported by '{dev}' (1..{info.max_binning})"
            )
        if subframe is not None and (
            (subframe.x + subframe.width) * binning > info.width
            or (subframe.y + subframe.height) * binning > info.height
        ):
            raise CameraError(
                f"INDI: subframe {subframe.x},{subframe.y} {subframe.width}x{subframe.height} "
                f"(binning {binning}) exceeds the {info.width}x{info.height} sensor of '{dev}'"
            )


def _indi_frame(info: CameraInfo, binning: int, subframe: Subframe | None) -> dict[str, float]:
    """INDI's ``<P>FRAME`` is in unbinned pixels; our subframes are in binned ones."""
    if subframe is None:
        return {"X": 0, "Y": 0, "WIDTH": info.width, "HEIGHT": info.height}
    return {
        "X": subframe.x * binning, "Y": subframe.y * binning,
        "WIDTH": subframe.width * binning, "HEIGHT": subframe.height * binning,
    }


def _float_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
