"""Build a defect (bad-pixel) map the way PHD2 does, and refine an existing one.

Stages: ``starting`` → ``capturing_darks`` → ``building_master_dark`` (PHD2's integer mean) →
``building_filtered_dark`` (31×31 median) → ``analyzing_defects`` → ``saving_map`` →
``completed``. The three files (master dark, filtered dark, pixel list) are first written to
staging names beside their targets and only then renamed into place, the pixel list last, so a
failure before the renames changes nothing and a reader never pairs a new list with an old
master. After saving, the map is loaded (which unloads a dark library, as in PHD2).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from phdserver.imaging import (
    DefectMapResult,
    MeanStacker,
    build_defect_map,
    phd2_median_filter,
)
from phdserver.library import (
    DefectMapInfo,
    read_master_frame,
    write_defect_map,
    write_master_frame,
)

from ._dark_frames import BuildContext, capture_into, cover_scope_alert, register_saved, seconds
from .registry import OperationHandle

__all__ = ["DefectMapRequest", "refine_defect_map", "run_defect_map_build"]

CAPTURE_SHARE = 80.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DefectMapRequest:
    exposure_ms: int
    frame_count: int
    hot_aggressiveness: int = 75
    cold_aggressiveness: int = 75


async def run_defect_map_build(
    handle: OperationHandle, context: BuildContext, request: DefectMapRequest
) -> dict[str, Any]:
    height, width = context.frame_shape
    date_obs = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "")
    handle.update(frames_captured=0, total_frames=request.frame_count)
    cover_scope_alert(context)
    handle.set_status("capturing_darks", f"Capturing {request.frame_count} darks", progress=0)
    stacker = MeanStacker((height, width))

    def describe(n: int, count: int) -> str:
        return f"Capturing dark {n} of {count} at {seconds(request.exposure_ms)}"

    await capture_into(
        context, handle, stacker, request.exposure_ms, request.frame_count,
        frames_before=0, total_frames=request.frame_count, progress_span=CAPTURE_SHARE,
        describe=describe, details=lambda n: {"frames_captured": n - 1},
    )
    handle.update(frames_captured=request.frame_count)

    handle.set_status("building_master_dark", "Building the master dark", progress=80)
    master = await trio.to_thread.run_sync(stacker.result)
    handle.set_status("building_filtered_dark", "Median-filtering the master dark (31x31)",
                      progress=84)
    filtered = await trio.to_thread.run_sync(phd2_median_filter, master)
    handle.set_status("analyzing_defects", "Finding hot and cold pixels", progress=92)
    result = await trio.to_thread.run_sync(
        build_defect_map, master, filtered, request.hot_aggressiveness,
        request.cold_aggressiveness,
    )

    paths = context.paths
    handle.set_status("saving_map", f"Saving {paths.defect_map.name}", progress=96)

    def save() -> None:
        frame_args: dict[str, Any] = {
            "exposure_ms": request.exposure_ms, "frame_count": request.frame_count,
            "creator": context.creator, "profile_id": context.profile.id,
            "profile_name": context.profile.name, "binning": context.binning,
            "bits_per_pixel": context.info.bits_per_pixel, "gain": context.profile.gain,
            "camera": context.info.name, "pixel_size_um": context.info.pixel_size_um,
            "date_obs": date_obs,
        }
        info = _map_info(result, context.info.name, request.exposure_ms, request.frame_count,
                         request.hot_aggressiveness, request.cold_aggressiveness)
        _write_group([
            (paths.defect_master, lambda p: write_master_frame(p, master, **frame_args)),
            (paths.defect_filtered, lambda p: write_master_frame(p, filtered, **frame_args)),
            (paths.defect_map, lambda p: write_defect_map(p, info, result.pixels)),
        ])

    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(save)
        await context.calibration.load_defect_map(paths, context.info, context.binning)
    handle.log.info("defect map saved", path=str(paths.defect_map),
                    hot=len(result.hot), cold=len(result.cold))
    await register_saved(context, handle, paths.defect_map)
    return _counts(result) | {"path": str(paths.defect_map)}


async def refine_defect_map(context: BuildContext, hot_aggressiveness: int,
                            cold_aggressiveness: int) -> dict[str, Any]:
    """Re-select defects from the saved master and filtered darks, without capturing."""
    paths = context.paths

    def refine() -> DefectMapResult:
        master, header = read_master_frame(paths.defect_master)
        filtered, _ = read_master_frame(paths.defect_filtered)
        result = build_defect_map(master, filtered, hot_aggressiveness, cold_aggressiveness)
        exposure_ms = round(float(header.get("EXPOSURE", 0)) * 1000)
        frame_count = int(header.get("STACKCNT", 1))
        info = _map_info(result, str(header.get("INSTRUME", context.info.name)), exposure_ms,
                         frame_count, hot_aggressiveness, cold_aggressiveness)
        write_defect_map(paths.defect_map, info, result.pixels)
        return result

    result = await trio.to_thread.run_sync(refine)
    await context.calibration.load_defect_map(paths, context.info, context.binning)
    return _counts(result) | {
        "hot_aggressiveness": hot_aggressiveness,
        "cold_aggressiveness": cold_aggressiveness,
    }


def _counts(result: DefectMapResult) -> dict[str, int]:
    return {
        "defect_count": len(result.cold) + len(result.hot),
        "hot_count": len(result.hot),
        "cold_count": len(result.cold),
    }


def _map_info(result: DefectMapResult, camera: str, exposure_ms: int, frame_count: int,
              hot: int, cold: int) -> DefectMapInfo:
    stats = result.stats
    return DefectMapInfo(
        generated=dt.datetime.now(),
        camera=camera,
        exposure_ms=exposure_ms,
        frame_count=frame_count,
        cold_aggressiveness=cold,
        hot_aggressiveness=hot,
        cold_sigma=result.cold_sigma,
        hot_sigma=result.hot_sigma,
        mean=stats.mean,
        stdev=stats.stdev,
        median=stats.median,
        mad=stats.mad,
        delta_cold=result.delta_cold,
        delta_hot=result.delta_hot,
    )


def _write_group(files: list[tuple[Path, Callable[[Path], None]]]) -> None:
    """Write every file under a staging name, then rename them into place in order."""
    staged: list[tuple[Path, Path]] = []
    try:
        for target, write in files:
            staging = target.with_name(f".{target.name}.staged")
            write(staging)
            staged.append((staging, target))
    except BaseException:
        for staging, _ in staged:
            staging.unlink(missing_ok=True)
        raise
    for staging, target in staged:
        os.replace(staging, target)
    if staged:
        fd = os.open(staged[0][1].parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
