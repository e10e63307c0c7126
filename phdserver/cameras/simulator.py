"""The embedded simulator camera: a :class:`~phdserver.cameras.sensor_model.SensorModel` behind
the :class:`~phdserver.cameras.base.Camera` interface.

Exposures wait with ``trio.sleep`` (``exposure × time_scale`` seconds), so tests run them in
virtual time under ``MockClock`` and a cancelled scope aborts at once; frames are rendered in a
worker thread so the event loop never stalls (inline under ``MockClock``, see
``SimulatorSettings.render_in_thread``). The cooler is a first-order model driven by
``trio.current_time()``, so it also follows virtual time. Like PHD2's own simulator it is called
"Simulator", has a shutter, sits at 15.0 °C with the cooler off after connecting, and reports a
single exposure at a time.

Errors are :class:`~phdserver.errors.CameraError` with messages starting "Simulator:". A test hook,
``fail_after_frames``, makes every capture after that many frames fail, so callers can check what
a camera failure in the middle of a build leaves behind.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import trio

from phdserver.cameras.base import (
    CameraInfo,
    CoolerStatus,
    Frame,
    FrameType,
    Subframe,
    capture_problem,
)
from phdserver.cameras.sensor_model import SensorConfig, SensorModel
from phdserver.errors import CameraError

__all__ = ["SimulatorCamera", "SimulatorSettings"]

_DEFAULT_SETPOINT_C = 10.0
"""PHD2's default cooler set point (Profile ``/camera/CoolerSetpt``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatorSettings:
    """How the simulated camera behaves. The sensor itself (size, seed, noise, defects) is the
    nested :class:`SensorConfig`; ``width``, ``height`` and ``seed`` read through to it."""

    name: str = "Simulator"
    sensor: SensorConfig = field(default_factory=SensorConfig)
    time_scale: float = 1.0
    """Wall (or virtual) time of an exposure = exposure × time_scale; 0.01 makes 15 s take
    0.15 s. The cooler's time constant is scaled alike."""
    has_shutter: bool = True
    has_cooler: bool = True
    pixel_size_um: float = 3.75
    max_binning: int = 4
    gain_range: tuple[int, int] = (0, 100)
    ambient_c: float = 15.0
    cooler_time_constant_s: float = 60.0
    cooler_max_delta_c: float = 40.0
    """The most the cooler can pull the sensor below ambient (at 100 % power)."""
    connect_delay_s: float = 0.0
    render_in_thread: bool | None = None
    """Render frames in a worker thread (True) or on the event loop (False). None (default):
    in a thread, except under trio's ``MockClock``. There a render thread's real run time looks
    like idleness to an autojumping clock, which then leaps to the next deadline (a test's
    ``fail_after`` fires mid-capture); rendering inline keeps virtual time exact."""
    fail_after_frames: int | None = None
    """Test hook: once this many frames were taken, every capture raises CameraError."""

    def __post_init__(self) -> None:
        if self.time_scale < 0 or not math.isfinite(self.time_scale):
            raise ValueError(f"time_scale must be a finite number >= 0, got {self.time_scale}")
        if self.max_binning < 1:
            raise ValueError(f"max_binning must be >= 1, got {self.max_binning}")
        if self.cooler_time_constant_s <= 0 or self.cooler_max_delta_c <= 0:
            raise ValueError("cooler time constant and max delta must be > 0")
        if self.connect_delay_s < 0:
            raise ValueError(f"connect_delay_s must be >= 0, got {self.connect_delay_s}")
        if self.fail_after_frames is not None and self.fail_after_frames < 0:
            raise ValueError(f"fail_after_frames must be >= 0, got {self.fail_after_frames}")

    @property
    def width(self) -> int:
        return self.sensor.width

    @property
    def height(self) -> int:
        return self.sensor.height

    @property
    def seed(self) -> int:
        return self.sensor.seed


class _Cooler:
    """First-order thermal model: the temperature relaxes exponentially towards a target
    (the set point, limited to what the cooler can reach, when on; ambient when off)."""

    def __init__(self, settings: SimulatorSettings, now: float) -> None:
        self._ambient = settings.ambient_c
        self._max_delta = settings.cooler_max_delta_c
        self._tau = settings.cooler_time_constant_s * settings.time_scale
        self.enabled = False
        self.setpoint_c = _DEFAULT_SETPOINT_C
        self._t0 = now
        self._temp0 = self._ambient
        self._target = self._ambient

    def temperature(self, now: float) -> float:
        if self._tau == 0:
            return self._target
        decay = math.exp(-max(now - self._t0, 0.0) / self._tau)
        return self._target + (self._temp0 - self._target) * decay

    def power_percent(self, now: float) -> float:
        if not self.enabled:
            return 0.0
        fraction = (self._ambient - self.temperature(now)) / self._max_delta
        return min(max(fraction * 100.0, 0.0), 100.0)

    def switch(self, now: float, enabled: bool, setpoint_c: float | None) -> None:
        self._temp0 = self.temperature(now)
        self._t0 = now
        self.enabled = enabled
        if setpoint_c is not None:
            self.setpoint_c = setpoint_c
        if enabled:
            reachable = self._ambient - self._max_delta
            self._target = min(max(self.setpoint_c, reachable), self._ambient)
        else:
            self._target = self._ambient


class SimulatorCamera:
    """The simulator camera.

    Parameters
    ----------
    settings : SimulatorSettings
        Behaviour and sensor; defaults match PHD2's simulator where that has an equivalent.
    limiter : trio.CapacityLimiter, optional
        Limits the worker threads that render frames (trio's default limiter when omitted).
    """

    def __init__(
        self,
        settings: SimulatorSettings | None = None,
        *,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        self.settings = settings if settings is not None else SimulatorSettings()
        self.sensor = SensorModel(self.settings.sensor)
        self._limiter = limiter
        self._connected = False
        self._generation = 0
        """Bumped on every disconnect, so a capture can tell that it outlived its connection."""
        self._cooler: _Cooler | None = None
        self._capture_scope: trio.CancelScope | None = None
        self._capturing = False
        self._frames_taken = 0
        self._abort_count = 0

    # ------------------------------------------------------------------------------- identity

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def info(self) -> CameraInfo:
        self._require_connected()
        s = self.settings
        return CameraInfo(
            name=s.name,
            width=s.sensor.width,
            height=s.sensor.height,
            bits_per_pixel=s.sensor.bits_per_pixel,
            pixel_size_um=s.pixel_size_um,
            max_binning=s.max_binning,
            has_shutter=s.has_shutter,
            has_cooler=s.has_cooler,
            gain_range=s.gain_range,
        )

    @property
    def frames_taken(self) -> int:
        """Frames successfully captured since the camera was created (the next frame's index)."""
        return self._frames_taken

    @property
    def abort_count(self) -> int:
        """Exposures aborted so far: cancelled by the caller, by :meth:`abort` or a disconnect."""
        return self._abort_count

    @property
    def capturing(self) -> bool:
        return self._capturing

    # ----------------------------------------------------------------------------- connection

    async def connect(self) -> None:
        if self._connected:
            await trio.lowlevel.checkpoint()
            return
        await trio.sleep(self.settings.connect_delay_s)
        if self._cooler is None:
            self._cooler = _Cooler(self.settings, trio.current_time())
        self._connected = True

    async def disconnect(self) -> None:
        await trio.lowlevel.checkpoint()
        if not self._connected:
            return
        self._connected = False
        self._generation += 1
        if self._capture_scope is not None:
            self._capture_scope.cancel()

    def _require_connected(self) -> None:
        if not self._connected:
            raise CameraError(f"{self.settings.name}: camera not connected")

    # -------------------------------------------------------------------------------- capture

    async def capture(
        self,
        exposure_ms: int,
        *,
        frame_type: FrameType = FrameType.LIGHT,
        binning: int = 1,
        gain: int | None = None,
        subframe: Subframe | None = None,
    ) -> Frame:
        """Expose for ``exposure_ms × time_scale`` (trio time), then render the frame in a
        worker thread. Cancelling the caller's scope aborts the exposure immediately."""
        await trio.lowlevel.checkpoint()
        self._require_connected()
        self._validate(exposure_ms, binning, gain, subframe)
        if self._capturing:
            raise CameraError(f"{self.settings.name}: an exposure is already in progress")
        self._capturing = True
        generation = self._generation
        try:
            return await self._expose(exposure_ms, frame_type, binning, gain, subframe, generation)
        except trio.Cancelled:
            self._abort_count += 1
            raise
        finally:
            self._capturing = False
            self._capture_scope = None

    async def _expose(
        self,
        exposure_ms: int,
        frame_type: FrameType,
        binning: int,
        gain: int | None,
        subframe: Subframe | None,
        generation: int,
    ) -> Frame:
        name = self.settings.name
        started = time.time()
        temperature = self._temperature_now()
        with trio.CancelScope() as scope:
            self._capture_scope = scope
            await trio.sleep(exposure_ms / 1000.0 * self.settings.time_scale)
        self._capture_scope = None
        if scope.cancelled_caught:
            self._abort_count += 1
            if generation != self._generation:
                raise CameraError(f"{name}: camera disconnected during the exposure")
            raise CameraError(f"{name}: exposure aborted")
        limit = self.settings.fail_after_frames
        if limit is not None and self._frames_taken >= limit:
            raise CameraError(f"{name}: injected failure")

        index = self._frames_taken
        self._frames_taken += 1

        def render() -> np.ndarray:
            return self.sensor.render(
                exposure_ms / 1000.0,
                frame_type,
                temperature,
                index,
                binning=binning,
                subframe=subframe,
                gain=gain,
            )

        if self._render_in_thread():
            data = await trio.to_thread.run_sync(render, limiter=self._limiter)
        else:
            data = render()
        if generation != self._generation:
            raise CameraError(f"{name}: camera disconnected during the exposure")
        return Frame(
            data=data,
            exposure_ms=exposure_ms,
            frame_type=frame_type,
            binning=binning,
            gain=gain if gain is not None else self.settings.sensor.default_gain,
            temperature_c=round(temperature, 2),
            timestamp=started,
            subframe=subframe,
            headers={"SIMFRAME": index, "SIMSEED": self.settings.sensor.seed},
        )

    def _render_in_thread(self) -> bool:
        choice = self.settings.render_in_thread
        if choice is not None:
            return choice
        # Without importing trio.testing (it pulls in pytest): if nobody imported it, the clock
        # cannot be a MockClock.
        testing = sys.modules.get("trio.testing")
        return testing is None or not isinstance(trio.lowlevel.current_clock(), testing.MockClock)

    def _validate(
        self, exposure_ms: int, binning: int, gain: int | None, subframe: Subframe | None
    ) -> None:
        s = self.settings
        problem = capture_problem(width=s.sensor.width, height=s.sensor.height,
                                  max_binning=s.max_binning, exposure_ms=exposure_ms,
                                  binning=binning, subframe=subframe)
        if problem is not None:
            raise CameraError(f"{s.name}: {problem}")
        if gain is not None and not s.gain_range[0] <= gain <= s.gain_range[1]:
            lo, hi = s.gain_range
            raise CameraError(f"{s.name}: gain {gain} outside {lo}..{hi}")

    async def abort(self) -> None:
        """Abort the exposure in progress, if any; that capture raises CameraError."""
        await trio.lowlevel.checkpoint()
        if self._capture_scope is not None:
            self._capture_scope.cancel()

    # --------------------------------------------------------------------------------- cooler

    def _temperature_now(self) -> float:
        if self._cooler is None:
            return self.settings.ambient_c
        return self._cooler.temperature(trio.current_time())

    async def cooler_status(self) -> CoolerStatus:
        await trio.lowlevel.checkpoint()
        self._require_connected()
        if self._cooler is None or not self.settings.has_cooler:
            return CoolerStatus(temperature_c=round(self._temperature_now(), 2))
        now = trio.current_time()
        return CoolerStatus(
            temperature_c=round(self._cooler.temperature(now), 2),
            cooler_on=self._cooler.enabled,
            setpoint_c=self._cooler.setpoint_c,
            power_percent=round(self._cooler.power_percent(now), 1),
        )

    async def set_cooler(self, enabled: bool, setpoint_c: float | None = None) -> None:
        await trio.lowlevel.checkpoint()
        self._require_connected()
        if not self.settings.has_cooler or self._cooler is None:
            raise CameraError(f"{self.settings.name}: camera has no cooler")
        self._cooler.switch(trio.current_time(), enabled, setpoint_c)
