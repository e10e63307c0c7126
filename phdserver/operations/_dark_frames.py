"""What the dark-library and defect-map builds share: their context and the capture loop.

Frames are captured one at a time and handed to a stacker in a worker thread as they arrive,
so a mean master costs no more than receiving its frames and never holds more than the
accumulator and the frame being added.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from phdserver.cameras.base import Camera, CameraInfo, FrameType
from phdserver.config import Profile
from phdserver.errors import CameraError
from phdserver.imaging import Stacker
from phdserver.library import CalibrationPaths
from phdserver.rpc.events import Alert, Event

from .loaded_calibration import LoadedCalibration
from .registry import OperationHandle

__all__ = ["BuildContext", "capture_into", "cover_scope_alert", "register_saved", "seconds"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildContext:
    """Everything a build needs, fixed when it starts."""

    camera: Camera
    info: CameraInfo
    profile: Profile
    paths: CalibrationPaths
    calibration: LoadedCalibration
    publish: Callable[[Event], None]
    spool_dir: Path
    creator: str
    register: Callable[[Path], None] | None = None
    """Adds a saved library or map to the master-frame index (blocking; run in a thread)."""

    @property
    def binning(self) -> int:
        return self.profile.binning

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (self.info.height // self.binning, self.info.width // self.binning)


async def register_saved(context: BuildContext, handle: OperationHandle, path: Path) -> None:
    """Index a file the build saved; a failure is logged, never fails the finished build."""
    if context.register is None:
        return
    try:
        await trio.to_thread.run_sync(context.register, path)
    except Exception as exc:  # the build's files are saved and loaded; indexing is extra
        handle.log.warning("could not add the file to the master index", path=str(path),
                           error=str(exc))


def seconds(exposure_ms: int) -> str:
    """PHD2's exposure label: "2.0 s", "0.01 s", "15 s"."""
    if exposure_ms >= 10000:
        return f"{exposure_ms / 1000:g} s"
    if exposure_ms < 100:
        return f"{exposure_ms / 1000:.2f} s"
    return f"{exposure_ms / 1000:.1f} s"


def cover_scope_alert(context: BuildContext) -> None:
    """A camera without a shutter cannot take darks by itself: ask once per build."""
    if not context.info.has_shutter:
        context.publish(Alert(
            Msg="Cover the guide scope: this camera has no shutter, so the dark frames "
                "need the light path blocked until the build finishes.",
            Type="warning",
        ))


async def capture_into(
    context: BuildContext,
    handle: OperationHandle,
    stacker: Stacker,
    exposure_ms: int,
    count: int,
    *,
    frames_before: int,
    total_frames: int,
    progress_span: float,
    describe: Callable[[int, int], str],
    details: Callable[[int], dict[str, object]],
) -> None:
    """Capture ``count`` darks at ``exposure_ms`` into ``stacker``, reporting progress.

    ``frames_before``/``total_frames`` place this batch within the whole build so progress is
    monotonic across batches; ``progress_span`` is the share of 0..100 that capturing covers.
    """
    for index in range(count):
        number = frames_before + index + 1
        handle.update(
            progress=progress_span * (number - 1) / total_frames,
            message=describe(index + 1, count),
            **details(index + 1),
        )
        frame = await context.camera.capture(
            exposure_ms,
            frame_type=FrameType.DARK,
            binning=context.binning,
            gain=context.profile.gain,
        )
        if frame.data.shape != context.frame_shape:
            raise CameraError(
                f"{context.info.name}: frame is {frame.width}x{frame.height}, expected "
                f"{context.frame_shape[1]}x{context.frame_shape[0]}"
            )
        await trio.to_thread.run_sync(stacker.add, frame.data)
        handle.update(progress=progress_span * number / total_frames)
