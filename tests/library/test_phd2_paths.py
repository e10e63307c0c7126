"""PHD2's file names, so that our files are PHD2's files."""

from __future__ import annotations

from pathlib import Path

import pytest

import phdserver.library as library
from phdserver.library import CalibrationPaths


def test_first_instance_has_no_infix(tmp_path: Path) -> None:
    p = CalibrationPaths(data_dir=tmp_path, instance=1, profile_id=3)
    d = tmp_path / "darks_defects"
    assert p.directory == d
    assert p.dark_library == d / "PHD2_dark_lib_3.fit"
    assert p.defect_map == d / "PHD2_defect_map_3.txt"
    assert p.defect_master == d / "PHD2_defect_map_master_3.fit"
    assert p.defect_filtered == d / "PHD2_defect_map_master_filt_3.fit"


def test_later_instances_have_an_infix(tmp_path: Path) -> None:
    p = CalibrationPaths(data_dir=tmp_path, instance=2, profile_id=1)
    d = tmp_path / "darks_defects"
    assert p.dark_library == d / "PHD2_dark_lib_2_1.fit"
    assert p.defect_map == d / "PHD2_defect_map_2_1.txt"
    assert p.defect_master == d / "PHD2_defect_map_master_2_1.fit"
    assert p.defect_filtered == d / "PHD2_defect_map_master_filt_2_1.fit"
    assert p.all_files == (p.dark_library, p.defect_map, p.defect_master, p.defect_filtered)


def test_data_dir_given_as_string_becomes_a_path(tmp_path: Path) -> None:
    p = CalibrationPaths(data_dir=str(tmp_path), profile_id=7)  # type: ignore[arg-type]
    assert p.dark_library == tmp_path / "darks_defects" / "PHD2_dark_lib_7.fit"


@pytest.mark.parametrize(("instance", "profile_id"), [(0, 1), (1, -1)])
def test_invalid_numbers_are_refused(tmp_path: Path, instance: int, profile_id: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        CalibrationPaths(data_dir=tmp_path, instance=instance, profile_id=profile_id)


def test_package_exports_what_it_lists() -> None:
    assert library.__all__ == sorted(library.__all__, key=lambda n: (not n.isupper(), n))
    for name in library.__all__:
        assert getattr(library, name) is not None
