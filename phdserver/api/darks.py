"""Dark-library methods (extensions: PHD2 has no dark-library API)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from phdserver.errors import InvalidParams, LibraryError, Refused
from phdserver.imaging import COMBINE_MODES
from phdserver.library import compatibility_problem, read_dark_library
from phdserver.operations import DarkLibraryRequest, Kind, run_dark_library_build
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

__all__ = ["DarkMethods"]

MAX_NOTE_LENGTH = 65
MAX_EXPOSURE_MS = 3_600_000


def _note(value: str) -> str:
    if not all(32 <= ord(c) < 127 for c in value):
        raise InvalidParams("invalid notes: only printable ASCII fits a FITS header",
                            param="notes")
    return value


def _exposure_list(value: list[Any]) -> tuple[int, ...]:
    if not value:
        raise InvalidParams("invalid exposures: the list is empty", param="exposures")
    out: set[int] = set()
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= MAX_EXPOSURE_MS:
            raise InvalidParams(
                f"invalid exposures: {item!r}, expected integers from 1 to {MAX_EXPOSURE_MS} ms",
                param="exposures")
        out.add(item)
    return tuple(sorted(out))


class DarkMethods:
    def __init__(self, app: App) -> None:
        self._app = app

    @rpc_method(
        "start_dark_library_build",
        Param(name="min_exposure", type="integer", default=1000, minimum=1,
              maximum=MAX_EXPOSURE_MS, description="shortest exposure, ms"),
        Param(name="max_exposure", type="integer", default=15000, minimum=1,
              maximum=MAX_EXPOSURE_MS, description="longest exposure, ms"),
        Param(name="frame_count", type="integer", default=5, minimum=1, maximum=100,
              description="frames per exposure"),
        Param(name="notes", type="string", default="", max_length=MAX_NOTE_LENGTH, check=_note,
              description="saved as USERNOTE"),
        Param(name="modify_existing", type="boolean", default=False,
              description="merge into the existing library instead of replacing it"),
        Param(name="exposures", type="array", default=None, check=_exposure_list,
              description="explicit exposure list in ms (overrides min/max)"),
        Param(name="combine", type="string", default="mean", choices=COMBINE_MODES,
              description="how frames are combined; mean is PHD2's integer mean"),
    )
    async def start_dark_library_build(
        self, min_exposure: int, max_exposure: int, frame_count: int, notes: str,
        modify_existing: bool, exposures: tuple[int, ...] | None, combine: str,
    ) -> dict[str, Any]:
        """Start building a dark library: one master dark per exposure of the exposure list
        between min_exposure and max_exposure. Returns at once with the operation id."""
        app = self._app
        if exposures is None:
            if min_exposure > max_exposure:
                raise InvalidParams(
                    f"invalid min_exposure: {min_exposure} is greater than max_exposure "
                    f"{max_exposure}", param="min_exposure")
            exposures = tuple(d for d in app.equipment.durations_ms
                              if min_exposure <= d <= max_exposure)
            if not exposures:
                raise InvalidParams(
                    f"invalid min_exposure/max_exposure: no exposure of the exposure list "
                    f"lies between {min_exposure} and {max_exposure} ms", param="min_exposure")
        if not app.equipment.connected:
            raise Refused("camera not connected")
        if modify_existing:
            await self._check_existing_library()
        request = DarkLibraryRequest(exposures_ms=tuple(sorted(set(exposures))),
                                     frame_count=frame_count, notes=notes,
                                     modify_existing=modify_existing, combine=combine)
        context = app.build_context()

        async def body(handle: OperationHandle) -> dict[str, Any]:
            result = await run_dark_library_build(handle, context, request)
            app.files.note(app.calibration_paths.dark_library, True)
            return result

        snapshot = await start_camera_operation(app, Kind.DARK_LIBRARY, body, {
            "total_exposures": len(request.exposures_ms),
            "total_frames": request.total_frames,
        })
        return {
            "operation_id": snapshot.id,
            "min_exposure": request.exposures_ms[0],
            "max_exposure": request.exposures_ms[-1],
            "frame_count": frame_count,
            "modify_existing": modify_existing,
            "total_exposures": len(request.exposures_ms),
            "exposures": list(request.exposures_ms),
            "combine": combine,
        }

    async def _check_existing_library(self) -> None:
        app = self._app
        path = app.calibration_paths.dark_library
        if not await app.files.check(path):
            return
        try:
            library = await trio.to_thread.run_sync(read_dark_library, path)
        except LibraryError as exc:
            raise Refused(f"cannot modify the existing dark library: {exc.message}") from None
        info = app.equipment.info
        binning = app.profile.binning
        problem = compatibility_problem(library, width=info.width // binning,
                                        height=info.height // binning, binning=binning,
                                        bits_per_pixel=info.bits_per_pixel)
        if problem is not None:
            raise Refused(f"cannot modify the existing dark library: {problem}")

    @rpc_method("get_dark_library_status",
                Param(name="operation_id", type="integer", default=None, minimum=1))
    async def get_dark_library_status(self, operation_id: int | None) -> dict[str, Any]:
        """Without an id: the loaded library. With one: that build's progress.

        ``file_exists`` is what the server knows from its own writes and its last check of
        the disk, made in a thread: a data directory that stops answering never stalls a
        poll (docs/decisions.md)."""
        if operation_id is not None:
            return self._build_status(operation_id)
        app = self._app
        library = app.calibration.dark_library
        active = active_operation(app, Kind.DARK_LIBRARY)
        path = app.calibration_paths.dark_library
        status: dict[str, Any] = {
            "loaded": library is not None,
            "frame_count": 0 if library is None else len(library.exposures),
            "min_exposure": 0 if library is None else library.exposures[0],
            "max_exposure": 0 if library is None else library.exposures[-1],
            "building": active is not None,
            "active_operation_id": None if active is None else active.id,
            "path": str(path),
            "file_exists": await app.files.poll_first(path),
        }
        if library is not None:
            status.update({
                "exposures": list(library.exposures),
                "notes": library.note,
                "width": library.width,
                "height": library.height,
                "binning": library.binning,
                "compatible": self._compatible(library),
            })
        return status

    def _compatible(self, library: Any) -> bool | None:
        equipment = self._app.equipment
        if not equipment.connected:
            return None
        info = equipment.info
        binning = equipment.profile.binning
        return compatibility_problem(library, width=info.width // binning,
                                     height=info.height // binning, binning=binning,
                                     bits_per_pixel=info.bits_per_pixel) is None

    def _build_status(self, operation_id: int) -> dict[str, Any]:
        snapshot = snapshot_of_kind(self._app, operation_id, Kind.DARK_LIBRARY)
        details = snapshot.details
        out: dict[str, Any] = {
            "operation_id": snapshot.id,
            "status": snapshot.status,
            "status_message": snapshot.message,
            "progress": float(round(snapshot.progress, 1)),
            "current_exposure_index": details.get("current_exposure_index", 0),
            "current_frame": details.get("current_frame", 0),
            "total_exposures": details.get("total_exposures", 0),
            "total_frames": details.get("total_frames", 0),
            "current_exposure_time": details.get("current_exposure_time", 0),
        }
        if snapshot.error is not None:
            out["error"] = snapshot.error
        if "path" in details:
            out["path"] = details["path"]
        return out

    @rpc_method("cancel_dark_library_build", OPERATION_ID)
    async def cancel_dark_library_build(self, operation_id: int) -> dict[str, Any]:
        """Cancel a build; the previous library is left untouched."""
        return await cancel_and_wait(self._app, operation_id, Kind.DARK_LIBRARY)

    @rpc_method("load_dark_library")
    async def load_dark_library(self) -> dict[str, Any]:
        """Load the profile's dark library (unloads the defect map, as in PHD2)."""
        app = self._app
        info = app.equipment.info
        path = app.calibration_paths.dark_library
        if not await app.files.check(path):
            raise Refused(f"no dark library for this profile ({path.name} does not exist)")
        await app.calibration.load_dark_library(app.calibration_paths, info,
                                                app.profile.binning)
        return await self.get_dark_library_status(None)

    @rpc_method("clear_dark_library")
    def clear_dark_library(self) -> int:
        """Stop using the dark library (the file stays)."""
        self._app.calibration.clear_dark_library()
        return 0
