"""The dark library or defect map in use for the current profile, and applying it to frames.

PHD2 keeps at most one of the two in use: loading a dark library unloads the defect map and the
other way round, and a frame is corrected with whichever is loaded (the defect map wins if both
exist on disk, as PHD2's auto-load on connect tries the map first). Files are read in a worker
thread; a file that does not fit the camera is refused with PHD2's message and an ``Alert``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import trio

from phdserver.cameras.base import CameraInfo
from phdserver.errors import LibraryError
from phdserver.imaging import remove_defects, subtract_dark
from phdserver.library import (
    CalibrationPaths,
    DarkLibrary,
    compatibility_problem,
    defect_map_compatibility_problem,
    read_dark_library,
    read_defect_map,
)
from phdserver.rpc.events import Alert, Event

__all__ = ["LoadedCalibration", "LoadedDefectMap"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedDefectMap:
    path: Path
    pixels: np.ndarray
    """(n, 2) int array of (x, y), in file order."""
    header: dict[str, str]


class LoadedCalibration:
    def __init__(self, publish: Callable[[Event], None], logger: Any = None) -> None:
        self._publish = publish
        self._log = logger if logger is not None else structlog.get_logger("phdserver.calibration")
        self.dark_library: DarkLibrary | None = None
        self.dark_library_path: Path | None = None
        self.defect_map: LoadedDefectMap | None = None

    # -- dark library ----------------------------------------------------------------------
    async def load_dark_library(self, paths: CalibrationPaths, info: CameraInfo,
                                binning: int) -> DarkLibrary:
        """Load the profile's library; refused (with an Alert) if it does not fit the camera."""
        path = paths.dark_library
        library = await trio.to_thread.run_sync(read_dark_library, path)
        problem = compatibility_problem(
            library,
            width=info.width // binning,
            height=info.height // binning,
            binning=binning,
            bits_per_pixel=info.bits_per_pixel,
        )
        if problem is not None:
            self._publish(Alert(Msg=problem, Type="error"))
            raise LibraryError(problem)
        self.defect_map = None
        self.dark_library = library
        self.dark_library_path = path
        self._log.info("dark library loaded", path=str(path), exposures=library.exposures)
        return library

    def clear_dark_library(self) -> None:
        if self.dark_library is not None:
            self._log.info("dark library unloaded")
        self.dark_library = None
        self.dark_library_path = None

    # -- defect map ------------------------------------------------------------------------
    async def load_defect_map(self, paths: CalibrationPaths, info: CameraInfo,
                              binning: int) -> LoadedDefectMap:
        def read() -> LoadedDefectMap:
            problem = defect_map_compatibility_problem(
                paths.defect_master, width=info.width // binning, height=info.height // binning
            )
            if problem is not None:
                raise _Mismatch(problem)
            pixels, header = read_defect_map(paths.defect_map)[:2]
            return LoadedDefectMap(path=paths.defect_map, pixels=pixels, header=dict(header))

        try:
            loaded = await trio.to_thread.run_sync(read)
        except _Mismatch as exc:
            self._publish(Alert(Msg=str(exc), Type="error"))
            raise LibraryError(str(exc)) from None
        self.dark_library = None
        self.dark_library_path = None
        self.defect_map = loaded
        self._log.info("defect map loaded", path=str(loaded.path), pixels=len(loaded.pixels))
        return loaded

    def clear_defect_map(self) -> None:
        if self.defect_map is not None:
            self._log.info("defect map unloaded")
        self.defect_map = None

    def clear_all(self) -> None:
        self.clear_dark_library()
        self.clear_defect_map()

    async def auto_load(self, paths: CalibrationPaths, info: CameraInfo, binning: int, *,
                        defect_map: bool, darks: bool) -> None:
        """On connect, as PHD2: the defect map if there is one, else the dark library."""
        exists = trio.to_thread.run_sync  # a stat may hang on a network share: never here
        if defect_map and await exists(paths.defect_map.exists, abandon_on_cancel=True):
            try:
                await self.load_defect_map(paths, info, binning)
                return
            except LibraryError as exc:
                self._log.warning("defect map not loaded", reason=exc.message)
        if darks and await exists(paths.dark_library.exists, abandon_on_cancel=True):
            try:
                await self.load_dark_library(paths, info, binning)
            except LibraryError as exc:
                self._log.warning("dark library not loaded", reason=exc.message)

    # -- applying --------------------------------------------------------------------------
    def corrector(self) -> Callable[[np.ndarray, int], np.ndarray] | None:
        """A function that corrects a light frame with what is loaded now (None if nothing).

        The function captures the loaded data, so it is safe to run in a worker thread while
        the loaded state changes.
        """
        defect_map = self.defect_map
        if defect_map is not None:
            pixels = defect_map.pixels

            def remove(image: np.ndarray, exposure_ms: int) -> np.ndarray:
                return remove_defects(image, pixels)

            return remove
        library = self.dark_library
        if library is not None:

            def subtract(image: np.ndarray, exposure_ms: int) -> np.ndarray:
                dark = library.frame_for(exposure_ms).data
                if dark.shape != image.shape:
                    return image
                return subtract_dark(image, dark)

            return subtract
        return None


class _Mismatch(Exception):
    pass
