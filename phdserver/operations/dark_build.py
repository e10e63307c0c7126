"""Build a dark library: one master dark per exposure, saved in PHD2's format, then loaded.

Stages: ``starting`` → ``capturing_darks`` → ``building_master_darks`` → ``saving_library`` →
``completed``. Streaming combine modes (PHD2's integer mean, min/max-rejected mean) finish each
master as its frames arrive; median and sigma-clip spool the frames of each exposure to disk
and combine them in row tiles in the building stage.

Nothing changes on disk or in the loaded library unless the build completes: the file is written
atomically (shielded from cancellation, so a cancel during the save is honoured only after it),
and a cancelled or failed build leaves the previous library byte-for-byte intact.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from typing import Any

import trio

from phdserver.imaging import make_stacker
from phdserver.library import DarkFrame, DarkLibrary, read_dark_library, write_dark_library
from phdserver.library.spool import frame_spool

from ._dark_frames import BuildContext, capture_into, cover_scope_alert, register_saved, seconds
from .registry import OperationHandle

__all__ = ["DarkLibraryRequest", "run_dark_library_build"]

STREAMING_MODES = frozenset({"mean", "minmax_mean"})
CAPTURE_SHARE = 90.0
BUILD_SHARE = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DarkLibraryRequest:
    exposures_ms: tuple[int, ...]
    frame_count: int
    notes: str = ""
    modify_existing: bool = False
    combine: str = "mean"

    @property
    def total_frames(self) -> int:
        return len(self.exposures_ms) * self.frame_count


async def run_dark_library_build(
    handle: OperationHandle, context: BuildContext, request: DarkLibraryRequest
) -> dict[str, Any]:
    exposures = request.exposures_ms
    total = request.total_frames
    height, width = context.frame_shape
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "")
    handle.update(total_exposures=len(exposures), total_frames=total,
                  current_exposure_index=0, current_frame=0, current_exposure_time=0)
    cover_scope_alert(context)
    handle.set_status("capturing_darks", f"Capturing {total} darks", progress=0)

    stackers = []
    temperatures: dict[int, float | None] = {}
    with contextlib.ExitStack() as spools:
        for index, exposure_ms in enumerate(exposures):
            buffer = None
            if request.combine not in STREAMING_MODES:
                buffer = spools.enter_context(
                    frame_spool(context.spool_dir, request.frame_count, height, width)
                )
            stacker = make_stacker(request.combine, (height, width), request.frame_count,
                                   buffer=buffer)

            def describe(n: int, count: int, exposure_ms: int = exposure_ms) -> str:
                return f"Capturing dark {n} of {count} at {seconds(exposure_ms)}"

            def details(n: int, index: int = index, exposure_ms: int = exposure_ms) -> dict:
                return {"current_exposure_index": index + 1, "current_frame": n,
                        "current_exposure_time": exposure_ms}

            await capture_into(
                context, handle, stacker, exposure_ms, request.frame_count,
                frames_before=index * request.frame_count, total_frames=total,
                progress_span=CAPTURE_SHARE, describe=describe, details=details,
            )
            temperatures[exposure_ms] = await _sensor_temperature(context)
            if request.combine in STREAMING_MODES:
                stacker = await trio.to_thread.run_sync(stacker.result)
            stackers.append((exposure_ms, stacker))

        handle.set_status("building_master_darks", "Building master darks",
                          progress=CAPTURE_SHARE)
        frames = []
        for number, (exposure_ms, stacker) in enumerate(stackers, start=1):
            if request.combine in STREAMING_MODES:
                master = stacker
            else:
                handle.update(message=f"Combining {request.frame_count} darks at "
                                      f"{seconds(exposure_ms)} ({request.combine})")
                master = await trio.to_thread.run_sync(
                    lambda s=stacker: s.result(cancel_check=trio.from_thread.check_cancelled)
                )
            frames.append(DarkFrame(
                data=master, exposure_ms=exposure_ms, binning=context.binning,
                bits_per_pixel=context.info.bits_per_pixel, gain=context.profile.gain,
                note=request.notes, frame_count=request.frame_count,
                temperature_c=temperatures.get(exposure_ms), date_obs=started,
                combine=request.combine, camera=context.info.name,
            ))
            handle.update(progress=CAPTURE_SHARE + BUILD_SHARE * number / len(stackers))

    library = DarkLibrary.from_frames(frames)
    path = context.paths.dark_library
    if request.modify_existing and await trio.to_thread.run_sync(path.exists):
        existing = await trio.to_thread.run_sync(read_dark_library, path)
        library = existing.merged_with(library).with_note(request.notes or existing.note)

    handle.set_status("saving_library", f"Saving {path.name}",
                      progress=CAPTURE_SHARE + BUILD_SHARE)
    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(write_dark_library, path, library, context.creator)
        await context.calibration.load_dark_library(context.paths, context.info, context.binning)
    handle.log.info("dark library saved", path=str(path), exposures=library.exposures)
    await register_saved(context, handle, path)
    return {"path": str(path), "exposures": list(library.exposures)}


async def _sensor_temperature(context: BuildContext) -> float | None:
    if not context.info.has_cooler:
        return None
    try:
        status = await context.camera.cooler_status()
    except Exception:  # a temperature is provenance only; never fail a build over it
        return None
    return round(status.temperature_c, 2)
