"""Calibration files on disk: PHD2's dark library and defect map, written atomically, and the
master-frame library (a SQLite index, matching, FITS headers). The night's batch steps that
use these files (light calibration, organising, culling, ...) live in ``phdserver.pipeline``.

This package does file I/O only (FITS through astropy, PHD2's defect-map text); the imaging
algorithms that produce the data live in ``phdserver.imaging``. Every function is synchronous
and blocking: async callers run them in ``trio.to_thread``. Every file is written so that a
crash, a full disk or a cancellation leaves the previous file intact (:mod:`.atomic`).
Files are interchangeable with real PHD2's (reference/phd2.md §2-3).
"""

from phdserver.library.atomic import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    create_exclusive,
    remove_stale_temp_files,
)
from phdserver.library.dark_library import (
    INCOMPATIBLE_FORMATS_MESSAGE,
    LIBRARY_MISMATCH_MESSAGE,
    MAX_NOTE_LENGTH,
    DarkFrame,
    DarkLibrary,
    compatibility_problem,
    read_dark_library,
    write_dark_library,
)
from phdserver.library.defect_map import (
    DEFECT_MAP_MISMATCH_MESSAGE,
    DEFECT_MAP_SIGNATURE,
    DefectMapContents,
    DefectMapInfo,
    defect_map_compatibility_problem,
    format_defect_map,
    parse_defect_map,
    read_defect_map,
    write_defect_map,
)
from phdserver.library.fits_frames import (
    FitsCard,
    as_uint16,
    fits_text,
    open_fits,
    read_master_frame,
    write_hdus,
    write_master_frame,
)
from phdserver.library.fits_headers import FrameMetadata, read_frame_metadata
from phdserver.library.masters_db import MasterRecord, MastersDB, UnknownMaster
from phdserver.library.matching import AmbiguousMatch, MatchPolicy, MatchResult, match_masters
from phdserver.library.phd2_paths import DARKS_SUBDIR, CalibrationPaths

__all__ = [
    "DARKS_SUBDIR",
    "DEFECT_MAP_MISMATCH_MESSAGE",
    "DEFECT_MAP_SIGNATURE",
    "INCOMPATIBLE_FORMATS_MESSAGE",
    "LIBRARY_MISMATCH_MESSAGE",
    "MAX_NOTE_LENGTH",
    "AmbiguousMatch",
    "CalibrationPaths",
    "DarkFrame",
    "DarkLibrary",
    "DefectMapContents",
    "DefectMapInfo",
    "FitsCard",
    "FrameMetadata",
    "MasterRecord",
    "MastersDB",
    "MatchPolicy",
    "MatchResult",
    "UnknownMaster",
    "as_uint16",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "compatibility_problem",
    "create_exclusive",
    "defect_map_compatibility_problem",
    "fits_text",
    "format_defect_map",
    "match_masters",
    "open_fits",
    "parse_defect_map",
    "read_dark_library",
    "read_defect_map",
    "read_frame_metadata",
    "read_master_frame",
    "remove_stale_temp_files",
    "write_dark_library",
    "write_defect_map",
    "write_hdus",
    "write_master_frame",
]
