"""Camera work: equipment, looping, the loaded calibration, and long-running builds.

Operations connect the protocol layer (which knows nothing of cameras) to cameras and imaging
(which know nothing of JSON-RPC).
"""

from ._dark_frames import BuildContext
from .camera_lock import CameraHolder, CameraLock
from .capture import CaptureService
from .dark_build import DarkLibraryRequest, run_dark_library_build
from .defect_build import DefectMapRequest, refine_defect_map, run_defect_map_build
from .equipment import STANDARD_DURATIONS_MS, Equipment
from .file_presence import FilePresence
from .lifecycle import STAGES, TERMINAL, Kind
from .loaded_calibration import LoadedCalibration
from .registry import HISTORY_LIMIT, OperationHandle, OperationRegistry, OperationSnapshot

__all__ = [
    "HISTORY_LIMIT",
    "STAGES",
    "STANDARD_DURATIONS_MS",
    "TERMINAL",
    "BuildContext",
    "CameraHolder",
    "CameraLock",
    "CaptureService",
    "DarkLibraryRequest",
    "DefectMapRequest",
    "Equipment",
    "FilePresence",
    "Kind",
    "LoadedCalibration",
    "OperationHandle",
    "OperationRegistry",
    "OperationSnapshot",
    "refine_defect_map",
    "run_dark_library_build",
    "run_defect_map_build",
]
