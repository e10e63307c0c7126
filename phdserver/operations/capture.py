"""Looping exposures and single frames, the way PHD2 runs them for its clients.

Both hold the camera (so a build is refused while looping, and the other way round). Looping
sends ``LoopingExposures`` per frame; since phdserver selects no guide star, each carries PHD2's
``ErrorCode`` 8 / "No star selected", exactly what PHD2 sends while looping without a star.
``stop_capture`` replies first and ``LoopingExposuresStopped`` follows, as in PHD2.
Frames are corrected with the loaded dark library or defect map in a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import trio

from phdserver.cameras.base import Frame, FrameType, Subframe
from phdserver.errors import PhdError, Refused
from phdserver.rpc.events import (
    Alert,
    ConfigurationChange,
    Event,
    LoopingExposures,
    LoopingExposuresStopped,
    SingleFrameComplete,
)

from ._background import BackgroundTasks
from .camera_lock import CameraHolder, CameraLock
from .equipment import Equipment
from .loaded_calibration import LoadedCalibration

__all__ = ["STOPPING_WAIT_S", "CaptureService"]

NO_STAR_SELECTED = 8
STOPPING_WAIT_S = 5.0
"""How long a build or a single frame waits for looping that ``stop_capture`` is ending."""


class CaptureService:
    def __init__(self, *, equipment: Equipment, lock: CameraLock,
                 calibration: LoadedCalibration, publish: Callable[[Event], None],
                 logger: Any = None) -> None:
        self._equipment = equipment
        self._lock = lock
        self._calibration = calibration
        self._publish = publish
        self._log = logger if logger is not None else structlog.get_logger("phdserver.capture")
        self._tasks = BackgroundTasks()
        self._loop_scope: trio.CancelScope | None = None
        self._loop_ended: trio.Event | None = None
        """Set when the loop task has ended and let go of the camera."""
        self._single_frame_active = False
        self.last_frame: Frame | None = None
        self.frame_number = 0
        self.limit_frame: Subframe | None = None
        """PHD2's limit frame: looping captures only this region (None: the whole sensor)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery this service starts its tasks in, until cancelled."""
        await self._tasks.run(task_status=task_status)

    @property
    def looping(self) -> bool:
        return self._loop_scope is not None

    @property
    def capturing(self) -> bool:
        return self.looping or self._single_frame_active

    # -- looping ---------------------------------------------------------------------------
    def start_loop(self) -> None:
        if self.looping:
            return
        nursery = self._tasks.nursery
        if not self._equipment.connected or nursery is None:
            raise Refused("could not start looping")
        if self._single_frame_active:
            raise Refused("could not start looping: a single frame is being captured")
        holder = CameraHolder(description="looping exposures")
        try:
            self._lock.acquire(holder)
        except Refused as exc:
            raise Refused(f"could not start looping: {exc.message}") from None
        scope = trio.CancelScope()
        self._loop_scope = scope
        self._loop_ended = ended = trio.Event()
        self.frame_number = 0
        nursery.start_soon(self._loop, scope, holder, ended)

    def stop(self) -> None:
        """Ask looping to stop; it lets go of the camera once its exposure is aborted."""
        if self._loop_scope is not None:
            self._loop_scope.cancel()

    async def wait_stopped(self, timeout_s: float = STOPPING_WAIT_S) -> None:
        """Wait, at most ``timeout_s``, for a loop that was asked to stop to let go of the camera.

        ``stop_capture`` replies at once, as PHD2's does, while the frame in flight is still
        being aborted or rendered (tens of ms, up to the camera's abort time): a script that
        sends ``stop_capture`` and then starts a build would otherwise be refused now and then
        with "looping exposures is using it". A loop that was not asked to stop is not waited
        for: the caller is refused as before.
        """
        scope, ended = self._loop_scope, self._loop_ended
        if scope is None or ended is None or not scope.cancel_called:
            return
        with trio.move_on_after(timeout_s):
            await ended.wait()

    async def _loop(self, scope: trio.CancelScope, holder: CameraHolder,
                    ended: trio.Event) -> None:
        try:
            with scope, self._lock.holding(holder):
                while True:
                    frame = await self._capture(self._equipment.configured_exposure_ms,
                                                subframe=self.limit_frame)
                    self.frame_number += 1
                    self._publish(LoopingExposures(
                        Frame=self.frame_number, ErrorCode=NO_STAR_SELECTED,
                        Status="No star selected",
                    ))
                    del frame
        except PhdError as exc:
            self._log.warning("looping stopped by a camera error", error=exc.message)
            self._publish_alert(f"Looping stopped: {exc.message}")
        finally:
            self._loop_scope = None
            ended.set()
            self._publish(LoopingExposuresStopped())

    def _publish_alert(self, message: str) -> None:
        self._publish(Alert(Msg=message, Type="error"))

    # -- single frame ----------------------------------------------------------------------
    def start_single_frame(self, *, exposure_ms: int | None, binning: int | None,
                           gain: int | None, subframe: Subframe | None,
                           path: Path | None, save: bool,
                           save_frame: Callable[[Frame, Path], None]) -> None:
        if not self._equipment.connected:
            raise Refused("cannot capture single frame when camera is not connected")
        if self.capturing:
            raise Refused("cannot capture single frame when capture is currently active")
        nursery = self._tasks.nursery
        if nursery is None:
            raise Refused("cannot capture single frame: server is shutting down")
        holder = CameraHolder(description="single frame capture")
        self._lock.acquire(holder)
        self._single_frame_active = True
        self._publish(ConfigurationChange())  # PHD2 sends it before the reply
        exposure = exposure_ms or self._equipment.configured_exposure_ms
        nursery.start_soon(self._single, holder, exposure, binning, gain, subframe,
                                 path if save else None, save_frame)

    async def _single(self, holder: CameraHolder, exposure_ms: int, binning: int | None,
                      gain: int | None, subframe: Subframe | None, path: Path | None,
                      save_frame: Callable[[Frame, Path], None]) -> None:
        event: SingleFrameComplete
        try:
            with self._lock.holding(holder):
                frame = await self._capture(exposure_ms, binning=binning, gain=gain,
                                            subframe=subframe)
            if path is not None:
                await trio.to_thread.run_sync(save_frame, frame, path)
                event = SingleFrameComplete(Success=True, Path=str(path))
            else:
                event = SingleFrameComplete(Success=True)
        except PhdError as exc:
            event = SingleFrameComplete(Success=False, Error=exc.message)
        except FileExistsError:
            event = SingleFrameComplete(Success=False, Error=f"file {path} already exists")
        except OSError as exc:
            event = SingleFrameComplete(Success=False, Error=f"could not save {path}: {exc}")
        finally:
            self._single_frame_active = False
        self._publish(event)
        self._publish(LoopingExposuresStopped())

    # -- shared ----------------------------------------------------------------------------
    async def _capture(self, exposure_ms: int, *, binning: int | None = None,
                       gain: int | None = None, subframe: Subframe | None = None) -> Frame:
        equipment = self._equipment
        profile = equipment.profile
        camera = equipment.camera
        frame = await camera.capture(
            exposure_ms,
            frame_type=FrameType.LIGHT,
            binning=binning or profile.binning,
            gain=profile.gain if gain is None else gain,
            subframe=subframe,
        )
        corrector = self._calibration.corrector()
        if corrector is not None and frame.subframe is None:
            data: np.ndarray = await trio.to_thread.run_sync(corrector, frame.data, exposure_ms)
            frame = _with_data(frame, data)
        self.last_frame = frame
        return frame


def _with_data(frame: Frame, data: np.ndarray) -> Frame:
    return Frame(
        data=data, exposure_ms=frame.exposure_ms, frame_type=frame.frame_type,
        binning=frame.binning, gain=frame.gain, offset=frame.offset,
        temperature_c=frame.temperature_c, timestamp=frame.timestamp, subframe=frame.subframe,
        headers=frame.headers,
    )
