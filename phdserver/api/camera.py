"""Camera methods: exposure, frame geometry, looping, single frames, saving, cooling."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from phdserver.cameras.base import Frame, Subframe
from phdserver.errors import InvalidParams, PhdError, Refused
from phdserver.library.fits_frames import write_master_frame

from ._params import Param, absolute_path
from ._registry import rpc_method

if TYPE_CHECKING:
    from phdserver.app import App

__all__ = ["CameraMethods"]


def _roi(value: list[Any]) -> list[int]:
    if len(value) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise InvalidParams("invalid roi: expected [x, y, width, height] integers", param="roi")
    if value[0] < 0 or value[1] < 0 or value[2] <= 0 or value[3] <= 0:
        raise InvalidParams("invalid roi: x and y must be >= 0, width and height > 0",
                            param="roi")
    return list(value)


def _subframe(value: list[Any]) -> list[int]:
    try:
        return _roi(value)
    except InvalidParams as exc:
        raise InvalidParams(exc.message.replace("roi", "subframe"), param="subframe") from None


class CameraMethods:
    def __init__(self, app: App) -> None:
        self._app = app

    # -- exposure --------------------------------------------------------------------------
    @rpc_method("get_exposure")
    def get_exposure(self) -> int:
        """The looping exposure in ms (0 while the camera is disconnected, as in PHD2)."""
        return self._app.equipment.exposure_ms

    @rpc_method("set_exposure", Param(name="exposure", type="integer"))
    def set_exposure(self, exposure: int) -> int:
        """Set the looping exposure; only values of ``get_exposure_durations`` are accepted."""
        self._app.equipment.set_exposure(exposure)
        return 0

    @rpc_method("get_exposure_durations")
    def get_exposure_durations(self) -> list[int]:
        """PHD2's exposure list plus the profile's custom entry."""
        return self._app.equipment.durations_ms

    # -- geometry --------------------------------------------------------------------------
    @rpc_method("get_camera_frame_size")
    def get_camera_frame_size(self) -> list[int]:
        """[width, height] of a full frame at the profile's binning."""
        equipment = self._app.equipment
        info = equipment.info
        binning = equipment.profile.binning
        return [info.width // binning, info.height // binning]

    @rpc_method("get_camera_binning")
    def get_camera_binning(self) -> int:
        """The profile's binning (error 1 while disconnected, as in PHD2)."""
        self._app.equipment.camera  # noqa: B018 - raises "camera not connected"
        return self._app.equipment.profile.binning

    @rpc_method("get_pixel_scale")
    def get_pixel_scale(self) -> float | None:
        """Arc-seconds per pixel from the profile (null when unknown)."""
        return self._app.equipment.pixel_scale

    @rpc_method("get_use_subframes")
    def get_use_subframes(self) -> bool:
        """Always false: phdserver captures full frames when looping."""
        return False

    @rpc_method("get_limit_frame")
    def get_limit_frame(self) -> dict[str, Any]:
        """The region looping is limited to (``roi`` null: the whole sensor)."""
        limit = self._app.capture.limit_frame
        if limit is None:
            return {"roi": None}
        return {"roi": [limit.x, limit.y, limit.width, limit.height]}

    @rpc_method("set_limit_frame",
                Param(name="roi", type="array", nullable=True, default=None, check=_roi))
    def set_limit_frame(self, roi: list[int] | None) -> int:
        """Limit looping frames to a region, or lift the limit with null."""
        if roi is not None and self._app.equipment.connected:
            width, height = self.get_camera_frame_size()
            if roi[0] + roi[2] > width or roi[1] + roi[3] > height:
                raise InvalidParams(
                    f"invalid roi: {roi} is outside the {width}x{height} frame", param="roi")
        self._app.capture.limit_frame = (
            None if roi is None else Subframe(x=roi[0], y=roi[1], width=roi[2], height=roi[3])
        )
        return 0

    # -- capture ---------------------------------------------------------------------------
    @rpc_method("loop")
    def loop(self) -> int:
        """Start looping exposures (``LoopingExposures`` per frame)."""
        self._app.capture.start_loop()
        return 0

    @rpc_method("stop_capture")
    def stop_capture(self) -> int:
        """Stop looping; ``LoopingExposuresStopped`` follows the reply."""
        self._app.capture.stop()
        return 0

    @rpc_method(
        "capture_single_frame",
        Param(name="exposure", type="integer", default=None, minimum=1, maximum=600000,
              attr="exposure_ms"),
        Param(name="binning", type="integer", default=None, minimum=1, maximum=4),
        Param(name="gain", type="integer", default=None, minimum=0, maximum=100),
        Param(name="subframe", type="array", default=None, check=_subframe),
        Param(name="path", type="string", default=None, check=lambda v: absolute_path("path", v)),
        Param(name="save", type="boolean", default=None),
    )
    async def capture_single_frame(self, exposure_ms: int | None, binning: int | None,
                                   gain: int | None, subframe: list[int] | None,
                                   path: Path | None, save: bool | None) -> int:
        """Take one frame; ``SingleFrameComplete`` reports the outcome (and the saved path).

        Right after ``stop_capture`` it first waits for looping to let go of the camera."""
        await self._app.capture.wait_stopped()
        if path is not None and await trio.Path(path).exists():
            raise InvalidParams(f'invalid path: "{path}" already exists', param="path")
        if save and path is None:
            path = self._new_image_path("single_frame")
        self._app.capture.start_single_frame(
            exposure_ms=exposure_ms, binning=binning, gain=gain,
            subframe=Subframe(x=subframe[0], y=subframe[1], width=subframe[2],
                              height=subframe[3]) if subframe else None,
            path=path, save=save if save is not None else path is not None,
            save_frame=self._save_frame,
        )
        return 0

    @rpc_method("save_image")
    async def save_image(self) -> dict[str, str]:
        """Save the last frame as FITS in the data directory and return its file name."""
        frame = self._app.capture.last_frame
        if frame is None:
            raise Refused("no image available", code=2)
        path = self._new_image_path("save_image")
        try:
            await trio.to_thread.run_sync(self._save_frame, frame, path)
        except OSError as exc:
            raise Refused(f"error saving image: {exc}", code=3) from None
        return {"filename": str(path)}

    def _new_image_path(self, stem: str) -> Path:
        directory = self._app.data_dir / "images"
        return directory / f"{stem}_{secrets.token_hex(4)}.fit"

    def _save_frame(self, frame: Frame, path: Path) -> None:
        app = self._app
        write_master_frame(
            path, frame.data, exposure_ms=frame.exposure_ms, frame_count=1,
            creator=app.creator, profile_id=app.profile.id, profile_name=app.profile.name,
            binning=frame.binning, gain=frame.gain or 0, camera=app.equipment.camera_name,
            exclusive=True,
        )

    # -- cooling ---------------------------------------------------------------------------
    @rpc_method("get_cooler_status")
    async def get_cooler_status(self) -> dict[str, Any]:
        """``{coolerOn, temperature}`` plus ``setpoint`` and ``power`` while cooling."""
        status = await self._cooler_status("failed to get cooler status")
        out: dict[str, Any] = {"coolerOn": status.cooler_on,
                               "temperature": round(status.temperature_c, 1)}
        if status.cooler_on and status.setpoint_c is not None:
            out["setpoint"] = round(status.setpoint_c, 1)
        if status.cooler_on and status.power_percent is not None:
            out["power"] = round(status.power_percent, 1)
        return out

    @rpc_method("set_cooler_state", Param(name="enabled", type="boolean"))
    async def set_cooler_state(self, enabled: bool) -> int:
        """Switch the cooler on (to the profile's set point) or off."""
        equipment = self._app.equipment
        camera = equipment.camera
        if not camera.info.has_cooler:
            raise Refused("camera lacks a cooler")
        await camera.set_cooler(enabled, equipment.profile.cooler_setpoint_c)
        return 0

    @rpc_method("get_ccd_temperature")
    async def get_ccd_temperature(self) -> dict[str, float]:
        """The sensor temperature in °C."""
        status = await self._cooler_status("failed to get sensor temperature")
        return {"temperature": round(status.temperature_c, 1)}

    async def _cooler_status(self, failure: str) -> Any:
        camera = self._app.equipment.camera
        try:
            return await camera.cooler_status()
        except PhdError as exc:
            raise Refused(f"{failure}: {exc.message}") from None
