"""PHD2's names for its calibration files, so that our files and PHD2's are the same files.

PHD2 keeps one dark library and one defect map per equipment profile in
``<data dir>/darks_defects/`` and names them by the *numeric* profile id, with an ``_<instance>``
infix only for the second and later instances of PHD2 running side by side (reference/phd2.md
§2 "Files", §3 "Files"). Pointing ``--data-dir`` at ``~/.phd2`` therefore shares the files with
PHD2 itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DARKS_SUBDIR", "CalibrationPaths"]

DARKS_SUBDIR = "darks_defects"
"""PHD2's sub-directory of its data directory for darks and defect maps."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibrationPaths:
    """Where the calibration files of one profile of one instance live."""

    data_dir: Path
    instance: int = 1
    """PHD2's instance number (1 for the first, the usual case)."""
    profile_id: int

    def __post_init__(self) -> None:
        if self.instance < 1:
            raise ValueError(f"instance must be >= 1, got {self.instance}")
        if self.profile_id < 0:
            raise ValueError(f"profile_id must be >= 0, got {self.profile_id}")
        object.__setattr__(self, "data_dir", Path(self.data_dir))

    @property
    def directory(self) -> Path:
        """``<data_dir>/darks_defects``."""
        return self.data_dir / DARKS_SUBDIR

    def _name(self, stem: str, suffix: str) -> Path:
        infix = f"_{self.instance}" if self.instance > 1 else ""
        return self.directory / f"{stem}{infix}_{self.profile_id}{suffix}"

    @property
    def dark_library(self) -> Path:
        """``PHD2_dark_lib[_<inst>]_<profileId>.fit``."""
        return self._name("PHD2_dark_lib", ".fit")

    @property
    def defect_map(self) -> Path:
        """``PHD2_defect_map[_<inst>]_<profileId>.txt``."""
        return self._name("PHD2_defect_map", ".txt")

    @property
    def defect_master(self) -> Path:
        """``PHD2_defect_map_master[_<inst>]_<profileId>.fit``: the master dark of the map."""
        return self._name("PHD2_defect_map_master", ".fit")

    @property
    def defect_filtered(self) -> Path:
        """``PHD2_defect_map_master_filt[_<inst>]_<profileId>.fit``: its median-filtered copy."""
        return self._name("PHD2_defect_map_master_filt", ".fit")

    @property
    def all_files(self) -> tuple[Path, ...]:
        """Every file of this profile (e.g. to delete them with the profile, as PHD2 does)."""
        return (self.dark_library, self.defect_map, self.defect_master, self.defect_filtered)
