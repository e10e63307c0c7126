"""The selected profile's equipment: its camera, connecting it, and the exposure settings.

Owns the camera object for the selected profile and the background tasks some backends need
(an INDI camera keeps its server connection in a task), in a nursery the app starts via
:meth:`Equipment.run`. Values follow what PHD2 reports, so clients that poll them see what they
expect: ``get_exposure`` is 0 while disconnected, the exposure list is PHD2's plus the profile's
custom entry, the pixel scale is known from the profile even while disconnected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
import trio

from phdserver.cameras.base import Camera, CameraInfo
from phdserver.config import CameraSettings, Profile
from phdserver.errors import Refused
from phdserver.rpc.events import ConfigurationChange, Event, GuideParamChange

from ._background import BackgroundTasks

__all__ = ["STANDARD_DURATIONS_MS", "CameraFactory", "Equipment"]

STANDARD_DURATIONS_MS = (
    10, 20, 50, 100, 200, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500,
    5000, 6000, 7000, 8000, 9000, 10000, 15000,
)
"""PHD2's exposure list; the profile's custom duration is appended as the last entry."""

ARCSEC_PER_RADIAN_ROUNDED = 206.265

CameraFactory = Callable[[CameraSettings], Camera]


class Equipment:
    def __init__(self, *, profile: Profile, camera_factory: CameraFactory,
                 publish: Callable[[Event], None], logger: Any = None) -> None:
        self._profile = profile
        self._factory = camera_factory
        self._publish = publish
        self._log = logger if logger is not None else structlog.get_logger("phdserver.camera")
        self._camera: Camera | None = None
        self._exposure_ms = profile.exposure_ms
        self._tasks = BackgroundTasks()
        self._camera_scope: trio.CancelScope | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery this service starts its tasks in, until cancelled."""
        await self._tasks.run(task_status=task_status)

    # -- profile and camera ----------------------------------------------------------------
    @property
    def profile(self) -> Profile:
        return self._profile

    def set_profile(self, profile: Profile) -> None:
        if self.connected:
            raise Refused("cannot change profile while equipment is connected")
        self._profile = profile
        self._exposure_ms = profile.exposure_ms
        self._drop_camera()

    @property
    def camera_name(self) -> str:
        camera = self._camera
        if camera is not None:
            return camera.name
        options = self._profile.camera.options
        if self._profile.camera.type == "simulator":
            return str(options.get("name", "Simulator"))
        if self._profile.camera.type == "controller":
            return str(options.get("name", "Controller"))
        return str(options.get("device") or options.get("name") or self._profile.camera.type)

    @property
    def camera(self) -> Camera:
        """The connected camera; code 1 "camera not connected" otherwise."""
        if self._camera is None or not self._camera.connected:
            raise Refused("camera not connected")
        return self._camera

    @property
    def connected(self) -> bool:
        return self._camera is not None and self._camera.connected

    @property
    def info(self) -> CameraInfo:
        return self.camera.info

    async def _ensure_camera(self) -> Camera:
        if self._camera is None:
            camera = self._factory(self._profile.camera)
            background = getattr(camera, "run", None)
            if background is not None:
                nursery = self._tasks.nursery
                if nursery is None:
                    raise RuntimeError("equipment is not running")
                scope = trio.CancelScope()

                async def run_camera(task_status: trio.TaskStatus[None]) -> None:
                    with scope:
                        await background(task_status=task_status)

                await nursery.start(run_camera)
                self._camera_scope = scope
            self._camera = camera
        return self._camera

    def _drop_camera(self) -> None:
        if self._camera_scope is not None:
            self._camera_scope.cancel()
            self._camera_scope = None
        self._camera = None

    async def connect(self) -> None:
        camera = await self._ensure_camera()
        if camera.connected:
            return
        await camera.connect()
        info = camera.info
        self._log.info("camera connected", camera=info.name, width=info.width,
                       height=info.height, bpp=info.bits_per_pixel)
        self._publish(ConfigurationChange())

    async def disconnect(self) -> None:
        if self._camera is None:
            return
        camera = self._camera
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await camera.disconnect()
        self._log.info("camera disconnected", camera=camera.name)

    # -- exposure --------------------------------------------------------------------------
    @property
    def durations_ms(self) -> list[int]:
        return [*STANDARD_DURATIONS_MS, self._profile.custom_exposure_ms]

    @property
    def exposure_ms(self) -> int:
        """The looping exposure; 0 while disconnected, as PHD2 reports it."""
        return self._exposure_ms if self.connected else 0

    @property
    def configured_exposure_ms(self) -> int:
        return self._exposure_ms

    def set_exposure(self, exposure_ms: int) -> None:
        if exposure_ms not in self.durations_ms:
            raise Refused("could not set exposure duration")
        self._exposure_ms = exposure_ms
        self._publish(GuideParamChange(Name="Exposure", Value=f"{exposure_ms} ms"))
        self._publish(ConfigurationChange())

    @property
    def pixel_scale(self) -> float | None:
        """Arc-seconds per (binned) pixel, from the profile's focal length and pixel size."""
        pixel_size = self._profile.pixel_size_um
        if pixel_size is None and self.connected:
            pixel_size = self.info.pixel_size_um
        if pixel_size is None:
            pixel_size = float(self._profile.camera.options.get("pixel_size_um", 3.75))
        focal = self._profile.focal_length_mm
        if not focal or not pixel_size:
            return None
        return round(pixel_size / focal * ARCSEC_PER_RADIAN_ROUNDED * self._profile.binning, 6)
