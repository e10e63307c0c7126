"""The SQLite master library: import, schema versions, checksums, moved and changed files."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from phdserver.errors import LibraryError
from phdserver.library import masters_db
from phdserver.library.dark_library import DarkFrame, DarkLibrary, write_dark_library
from phdserver.library.defect_map import DefectMapInfo, write_defect_map
from phdserver.library.fits_headers import FrameType
from phdserver.library.masters_db import (
    DB_FILE_NAME,
    ImportStatus,
    MastersDB,
    Origin,
    UnknownMaster,
    VerifyStatus,
    migrate,
)
from tests.calibration import SHAPE, make_scene, rig, sha256, write_fits


@pytest.fixture
def db(tmp_path: Path) -> MastersDB:
    with MastersDB.in_data_dir(tmp_path / "data") as opened:
        yield opened


def _statuses(outcomes: list[masters_db.ImportOutcome]) -> dict[str, ImportStatus]:
    return {o.path.name + (f"#{o.hdu}" if o.hdu else ""): o.status for o in outcomes}


def test_import_a_directory_of_masters(tmp_path: Path, db: MastersDB) -> None:
    scene = make_scene(tmp_path)
    single_dark = write_fits(scene.root / "masters" / "single_dark.fits",
                             np.zeros(SHAPE, np.uint16), **rig(IMAGETYP="DARK", EXPTIME=300.0))
    outcomes = db.import_paths([scene.root / "masters", scene.lights[0]])
    statuses = _statuses(outcomes)
    assert statuses[single_dark.name] is ImportStatus.SKIPPED
    assert statuses[scene.lights[0].name] is ImportStatus.SKIPPED
    added = {n for n, s in statuses.items() if s is ImportStatus.ADDED}
    assert added == {p.name for p in scene.masters.values()}
    records = {r.path.name: r for r in db.list_masters()}
    dark = records["dark300.fits"]
    assert dark.frame_type is FrameType.DARK
    assert dark.checksum == sha256(scene.masters["dark300"])
    assert dark.size_bytes == scene.masters["dark300"].stat().st_size
    assert dark.meta.exposure_s == 300.0
    assert dark.meta.ccd_temp_c == pytest.approx(-10.1)
    assert records["dark120.fits"].meta.exposure_s == 120.0  # 'Dark Frame' + NCOMBINE
    assert records["flat_ha.fits"].meta.night is not None
    assert [r.path.name for r in db.list_masters(FrameType.BIAS)] == ["bias.fits",
                                                                      "bias_gain0.fits"]
    forced = db.import_file(single_dark, frame_type=FrameType.DARK)
    assert forced[0].status is ImportStatus.ADDED
    assert json.dumps([o.to_json() for o in outcomes])


def test_records_survive_reopening_and_schema_is_versioned(tmp_path: Path) -> None:
    scene = make_scene(tmp_path, light_count=0)
    path = tmp_path / DB_FILE_NAME
    with MastersDB(path) as db:
        assert db.schema_version == len(masters_db.MIGRATIONS)
        db.import_paths([scene.masters["bias"]])
        first = db.list_masters()
    with MastersDB(path) as db:
        assert db.list_masters() == first
        assert db.get(first[0].id) == first[0]


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE_NAME
    MastersDB(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(LibraryError, match="schema version 99"):
        MastersDB(path)


def test_migrations_run_in_order_once(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.sqlite3", isolation_level=None)
    steps = (("CREATE TABLE a (x INTEGER)",), ("ALTER TABLE a ADD COLUMN y TEXT",))
    assert migrate(conn, steps[:1]) == 0
    assert migrate(conn, steps) == 1
    assert migrate(conn, steps) == 2
    columns = [row[1] for row in conn.execute("PRAGMA table_info(a)")]
    assert columns == ["x", "y"]
    broken = (*steps, ("CREATE TABLE a (z)",))  # fails: the version must stay at 2
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, broken)
    assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == 2


def test_verify_is_a_stat_until_something_changes(
    tmp_path: Path, db: MastersDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene = make_scene(tmp_path, light_count=0)
    db.import_paths([scene.masters["dark300"], scene.masters["flat_ha"]])
    hashed: list[Path] = []
    real = masters_db.file_checksum

    def counting(path: Path) -> str:
        hashed.append(Path(path))
        return real(path)

    monkeypatch.setattr(masters_db, "file_checksum", counting)
    assert all(c.status is VerifyStatus.OK for c in db.verify())
    assert hashed == []
    # touched, same content: re-hashed once, ok, and the record refreshed
    dark = scene.masters["dark300"]
    os.utime(dark, ns=(1_000_000_000, 1_000_000_000))
    checks = {c.record.path.name: c for c in db.verify()}
    assert checks["dark300.fits"].status is VerifyStatus.OK
    assert "identical" in checks["dark300.fits"].message
    assert hashed == [dark]
    assert db.verify()[0].status is VerifyStatus.OK
    assert hashed == [dark]  # refreshed: a stat again
    # changed content: detected and reported, never ok
    data = np.ones(SHAPE, np.float32)
    dark.unlink()
    write_fits(dark, data, **rig(IMAGETYP="Master Dark", EXPTIME=300.0))
    changed = {c.record.path.name: c for c in db.verify()}["dark300.fits"]
    assert changed.status is VerifyStatus.CHANGED
    assert not changed.usable
    assert "SHA-256 differs" in changed.message
    # re-importing the changed file refreshes the record under the same id
    outcome = db.import_file(dark)[0]
    assert outcome.status is ImportStatus.UPDATED
    assert outcome.record is not None
    assert outcome.record.id == changed.record.id


def test_a_moved_master_is_missing_then_relocated_by_checksum(
    tmp_path: Path, db: MastersDB
) -> None:
    scene = make_scene(tmp_path, light_count=0)
    record = db.import_file(scene.masters["flat_ha"])[0].record
    assert record is not None
    moved = tmp_path / "elsewhere" / "flat.fits"
    moved.parent.mkdir()
    shutil.move(scene.masters["flat_ha"], moved)
    check = db.verify()[0]
    assert check.status is VerifyStatus.MISSING
    assert "no longer exists" in check.message
    assert json.dumps(check.to_json())
    outcome = db.import_paths([moved.parent])[0]
    assert outcome.status is ImportStatus.RELOCATED
    assert outcome.record is not None
    assert outcome.record.id == record.id
    assert outcome.record.path == moved
    assert db.verify()[0].status is VerifyStatus.OK


def test_a_copy_is_a_duplicate_and_reimport_is_unchanged(tmp_path: Path, db: MastersDB) -> None:
    scene = make_scene(tmp_path, light_count=0)
    original = scene.masters["bias"]
    copy = tmp_path / "copy_of_bias.fits"
    shutil.copyfile(original, copy)
    assert db.import_file(original)[0].status is ImportStatus.ADDED
    assert db.import_file(original)[0].status is ImportStatus.UNCHANGED
    duplicate = db.import_file(copy)[0]
    assert duplicate.status is ImportStatus.DUPLICATE
    assert len(db.list_masters()) == 1


def test_remove_and_unknown_ids(tmp_path: Path, db: MastersDB) -> None:
    scene = make_scene(tmp_path, light_count=0)
    record = db.import_file(scene.masters["bias"])[0].record
    assert record is not None
    assert db.remove(record.id) == record
    assert scene.masters["bias"].exists()  # the file is left alone
    with pytest.raises(UnknownMaster):
        db.get(record.id)
    with pytest.raises(UnknownMaster):
        db.remove(record.id)
    again = db.import_file(scene.masters["bias"])[0].record
    assert again is not None
    assert again.id != record.id  # ids are never reused


def test_a_phd2_dark_library_becomes_one_dark_per_hdu(tmp_path: Path, db: MastersDB) -> None:
    frames = [DarkFrame(data=np.full(SHAPE, 500 + e // 100, np.uint16), exposure_ms=e,
                        temperature_c=-5.0) for e in (1000, 2000, 3000)]
    path = tmp_path / "darks_defects" / "PHD2_dark_lib_1.fit"
    write_dark_library(path, DarkLibrary.from_frames(frames), "phdserver test")
    outcomes = db.register_dark_library(path)
    assert [o.status for o in outcomes] == [ImportStatus.ADDED] * 3
    records = db.list_masters(FrameType.DARK)
    assert [(r.hdu, r.meta.exposure_s) for r in records] == [(0, 1.0), (1, 2.0), (2, 3.0)]
    assert all(r.origin is Origin.DARK_LIBRARY for r in records)
    assert records[0].name == "PHD2_dark_lib_1.fit#0"
    assert records[2].ref == f"{path}#2"
    # rebuilt with fewer exposures: the records follow
    write_dark_library(path, DarkLibrary.from_frames(frames[:2]), "phdserver test")
    outcomes = db.register_dark_library(path)
    assert [o.status for o in outcomes] == [ImportStatus.UPDATED] * 2
    assert [r.hdu for r in db.list_masters(FrameType.DARK)] == [0, 1]


def test_a_defect_map_is_registered_for_reference(tmp_path: Path, db: MastersDB) -> None:
    from datetime import datetime

    info = DefectMapInfo(generated=datetime(2024, 1, 1, 12), camera="Simulator",
                         exposure_ms=15000, frame_count=10, cold_aggressiveness=75,
                         hot_aggressiveness=75, cold_sigma=0.35, hot_sigma=0.35, mean=500,
                         stdev=10, median=500, mad=5, delta_cold=-3, delta_hot=3)
    path = tmp_path / "PHD2_defect_map_1.txt"
    write_defect_map(path, info, [(1, 2), (3, 4)])
    outcome = db.import_paths([tmp_path])[0]
    assert outcome.status is ImportStatus.ADDED
    record = db.list_masters(FrameType.DEFECT_MAP)[0]
    assert record.origin is Origin.DEFECT_MAP
    assert record.meta.camera == "Simulator"
    assert record.meta.exposure_s == 15.0


def test_unreadable_files_are_reported_and_the_rest_imported(
    tmp_path: Path, db: MastersDB
) -> None:
    scene = make_scene(tmp_path, light_count=0)
    broken = scene.root / "masters" / "broken.fits"
    broken.write_bytes(b"not a FITS file at all")
    statuses = _statuses(db.import_paths([scene.root / "masters"]))
    assert statuses["broken.fits"] is ImportStatus.FAILED
    assert statuses["bias.fits"] is ImportStatus.ADDED
