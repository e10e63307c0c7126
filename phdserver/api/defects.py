"""Defect-map (bad-pixel map) methods (extensions: PHD2 has no defect-map API)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from phdserver.errors import Refused
from phdserver.library import defect_map_compatibility_problem
from phdserver.operations import (
    DefectMapRequest,
    Kind,
    refine_defect_map,
    run_defect_map_build,
)
from phdserver.operations.registry import OperationHandle

from ._params import Param
from ._registry import rpc_method
from .operations import (
    OPERATION_ID,
    active_operation,
    cancel_and_wait,
    snapshot_of_kind,
    start_camera_operation,
)

if TYPE_CHECKING:
    from phdserver.app import App

__all__ = ["DefectMethods"]


def _aggressiveness(name: str) -> Param:
    return Param(name=name, type="integer", default=75, minimum=0, maximum=100,
                 description="0 (few pixels) to 100 (many); PHD2's default is 75")


class DefectMethods:
    def __init__(self, app: App) -> None:
        self._app = app

    @rpc_method(
        "start_defect_map_build",
        Param(name="exposure_time", type="integer", default=15000, minimum=1000,
              maximum=300000, description="dark exposure, ms"),
        Param(name="frame_count", type="integer", default=10, minimum=5, maximum=100,
              description="darks averaged into the master"),
        _aggressiveness("hot_aggressiveness"),
        _aggressiveness("cold_aggressiveness"),
    )
    async def start_defect_map_build(self, exposure_time: int, frame_count: int,
                                     hot_aggressiveness: int,
                                     cold_aggressiveness: int) -> dict[str, Any]:
        """Start building a defect map from a master dark, as PHD2's dialog does."""
        app = self._app
        if not app.equipment.connected:
            raise Refused("camera not connected")
        request = DefectMapRequest(exposure_ms=exposure_time, frame_count=frame_count,
                                   hot_aggressiveness=hot_aggressiveness,
                                   cold_aggressiveness=cold_aggressiveness)
        context = app.build_context()

        async def body(handle: OperationHandle) -> dict[str, Any]:
            result = await run_defect_map_build(handle, context, request)
            _note_written(app)
            return result

        snapshot = await start_camera_operation(app, Kind.DEFECT_MAP, body,
                                                {"total_frames": frame_count})
        return {
            "operation_id": snapshot.id,
            "exposure_time": exposure_time,
            "frame_count": frame_count,
            "hot_aggressiveness": hot_aggressiveness,
            "cold_aggressiveness": cold_aggressiveness,
        }

    @rpc_method("get_defect_map_build_status", OPERATION_ID)
    def get_defect_map_build_status(self, operation_id: int) -> dict[str, Any]:
        """A defect-map build's progress; the pixel counts once completed."""
        snapshot = snapshot_of_kind(self._app, operation_id, Kind.DEFECT_MAP)
        details = snapshot.details
        out: dict[str, Any] = {
            "operation_id": snapshot.id,
            "status": snapshot.status,
            "progress": float(round(snapshot.progress, 1)),
            "frames_captured": details.get("frames_captured", 0),
            "total_frames": details.get("total_frames", 0),
            "message": snapshot.message,
        }
        if snapshot.error is not None:
            out["error"] = snapshot.error
        for key in ("defect_count", "hot_count", "cold_count", "path"):
            if key in details:
                out[key] = details[key]
        return out

    @rpc_method("cancel_defect_map_build", OPERATION_ID)
    async def cancel_defect_map_build(self, operation_id: int) -> dict[str, Any]:
        """Cancel a build; the previous map is left untouched."""
        return await cancel_and_wait(self._app, operation_id, Kind.DEFECT_MAP)

    @rpc_method("get_defect_map_status")
    async def get_defect_map_status(self) -> dict[str, Any]:
        """Whether a defect map is loaded, how many pixels it lists, and where its file is.

        The ``*_exists`` members come from our own writes and the last check of the disk,
        made in a thread (see ``get_dark_library_status``)."""
        app = self._app
        loaded = app.calibration.defect_map
        active = active_operation(app, Kind.DEFECT_MAP)
        paths = app.calibration_paths
        status: dict[str, Any] = {
            "loaded": loaded is not None,
            "pixel_count": 0 if loaded is None else len(loaded.pixels),
            "building": active is not None,
            "active_operation_id": None if active is None else active.id,
            "path": str(paths.defect_map),
            "file_exists": await app.files.poll_first(paths.defect_map),
            "master_exists": await app.files.poll_first(paths.defect_master),
        }
        return status

    @rpc_method("load_defect_map")
    async def load_defect_map(self) -> dict[str, Any]:
        """Load the profile's defect map (unloads the dark library, as in PHD2)."""
        app = self._app
        info = app.equipment.info
        paths = app.calibration_paths
        if not await app.files.check(paths.defect_map):
            raise Refused(f"no defect map for this profile ({paths.defect_map.name} does not "
                          "exist)")
        await app.calibration.load_defect_map(paths, info, app.profile.binning)
        return await self.get_defect_map_status()

    @rpc_method("clear_defect_map")
    def clear_defect_map(self) -> int:
        """Stop using the defect map (the files stay)."""
        self._app.calibration.clear_defect_map()
        return 0

    @rpc_method("refine_defect_map", _aggressiveness("hot_aggressiveness"),
                _aggressiveness("cold_aggressiveness"))
    async def refine_defect_map(self, hot_aggressiveness: int,
                                cold_aggressiveness: int) -> dict[str, Any]:
        """Re-select defects from the saved master and filtered darks with new
        aggressiveness, without capturing (PHD2's refine dialog), then load the map."""
        app = self._app
        paths = app.calibration_paths
        if not (await app.files.check(paths.defect_master)
                and await app.files.check(paths.defect_filtered)):
            raise Refused("no defect map has been built for this profile: build one first")
        active = active_operation(app, Kind.DEFECT_MAP)
        if active is not None:
            raise Refused(f"a defect map build (operation {active.id}) is running")
        context = app.build_context()  # raises "camera not connected"
        problem = await trio.to_thread.run_sync(
            lambda: defect_map_compatibility_problem(
                paths.defect_master, width=context.frame_shape[1], height=context.frame_shape[0]))
        if problem is not None:
            raise Refused(problem)
        result = await refine_defect_map(context, hot_aggressiveness, cold_aggressiveness)
        app.files.note(paths.defect_map, True)
        return result


def _note_written(app: App) -> None:
    """A completed build wrote the map, its master and its filtered dark."""
    paths = app.calibration_paths
    for path in (paths.defect_map, paths.defect_master, paths.defect_filtered):
        app.files.note(path, True)
