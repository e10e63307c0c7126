"""Accepted counts reach a real Target Scheduler database, and nothing else changes.

The database is a real SQLite file with the plugin's tables and columns (reference/data-
management-details.md §3, schema version 23): projects, targets (a mosaic's panels named
"<target> Panel <p>"), exposure templates, exposure plans (one with exposure -1, "use the
template's"), two N.I.N.A. profiles, and the tables the sync must not touch.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from phdserver.pipeline.accepted_db import AcceptedCount, AcceptedDB, AcceptedLight
from phdserver.pipeline.scheduler_sync import SchedulerError, apply_sync, plan_sync

RIG_A, RIG_B = "C8E@f7+ASI2600MM", "RedCat@f4.9+ASI533MC"
PROFILE_A, PROFILE_B = "6f1c-profile-a", "9d2e-profile-b"

SCHEMA = """
CREATE TABLE project (Id INTEGER PRIMARY KEY, profileId TEXT NOT NULL, name TEXT NOT NULL,
  description TEXT, state INTEGER, priority INTEGER, createdate INTEGER, activedate INTEGER,
  inactivedate INTEGER, minimumtime INTEGER, minimumaltitude REAL, usecustomhorizon INTEGER,
  horizonoffset REAL, meridianwindow INTEGER, filterswitchfrequency INTEGER,
  ditherevery INTEGER, enablegrader INTEGER, isMosaic INTEGER, flatsHandling INTEGER,
  maximumaltitude REAL, smartexposureorder INTEGER, guid TEXT);
CREATE TABLE target (Id INTEGER PRIMARY KEY, name TEXT NOT NULL, active INTEGER, ra REAL,
  dec REAL, epochcode INTEGER, rotation REAL, roi REAL, projectid INTEGER, guid TEXT);
CREATE TABLE exposuretemplate (Id INTEGER PRIMARY KEY, profileId TEXT NOT NULL,
  name TEXT NOT NULL, filtername TEXT NOT NULL, gain INTEGER, offset INTEGER, bin INTEGER,
  readoutmode INTEGER, twilightlevel INTEGER, moonavoidanceenabled INTEGER,
  moonavoidanceseparation REAL, moonavoidancewidth INTEGER, maximumhumidity REAL,
  defaultexposure REAL DEFAULT 60, moonrelaxscale REAL, moonrelaxmaxaltitude REAL,
  moonrelaxminaltitude REAL, moondownenabled INTEGER, ditherevery INTEGER,
  minutesOffset INTEGER, guid TEXT);
CREATE TABLE exposureplan (Id INTEGER PRIMARY KEY, profileId TEXT NOT NULL, exposure REAL,
  desired INTEGER, acquired INTEGER, accepted INTEGER, targetid INTEGER,
  exposureTemplateId INTEGER, enabled INTEGER DEFAULT 1, guid TEXT);
CREATE TABLE acquiredimage (Id INTEGER PRIMARY KEY, projectId INTEGER, targetId INTEGER,
  acquireddate INTEGER, filtername TEXT, gradingStatus INTEGER, metadata TEXT,
  rejectreason TEXT, exposureId INTEGER, profileId TEXT, guid TEXT);
CREATE TABLE profilepreference (Id INTEGER PRIMARY KEY, profileId TEXT, exposurethrottle REAL);
PRAGMA user_version = 23;
"""

ROWS = """
INSERT INTO project (Id, profileId, name, state) VALUES
  (1, '6f1c-profile-a', 'M33 mosaic', 1), (2, '6f1c-profile-a', 'NGC 7000', 1),
  (3, '9d2e-profile-b', 'NGC 7000 wide', 1);
INSERT INTO target (Id, name, projectid, active) VALUES
  (1, 'M33 Panel A', 1, 1), (2, 'M33 Panel B', 1, 1), (3, 'NGC 7000', 2, 1),
  (4, 'NGC 7000', 3, 1);
INSERT INTO exposuretemplate (Id, profileId, name, filtername, defaultexposure) VALUES
  (1, '6f1c-profile-a', 'Lum 300', 'L', 300), (2, '6f1c-profile-a', 'Ha', 'H', 600),
  (3, '9d2e-profile-b', 'OSC', 'LeXtr', 180);
INSERT INTO exposureplan (Id, profileId, exposure, desired, acquired, accepted, targetid,
                          exposureTemplateId) VALUES
  (1, '6f1c-profile-a', -1, 40, 12, 0, 1, 1),
  (2, '6f1c-profile-a', -1, 40, 3, 7, 2, 1),
  (3, '6f1c-profile-a', 600, 30, 10, 2, 3, 2),
  (4, '6f1c-profile-a', 300, 20, 0, 5, 3, 1),
  (5, '9d2e-profile-b', -1, 100, 50, 0, 4, 3);
INSERT INTO acquiredimage (Id, projectId, targetId, filtername, gradingStatus, metadata)
  VALUES (1, 1, 1, 'L', 1, '{"HFR": 2.1}');
INSERT INTO profilepreference (Id, profileId, exposurethrottle) VALUES (1, '6f1c-profile-a', 125);
"""


def make_scheduler_db(path: Path, *, schema: str = SCHEMA) -> Path:
    with closing(sqlite3.connect(path)) as db:
        db.executescript(schema + ROWS)
        db.commit()
    return path


def dump(path: Path) -> dict[str, list[tuple[object, ...]]]:
    with closing(sqlite3.connect(path)) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: db.execute(f'SELECT * FROM "{t}" ORDER BY 1').fetchall() for t in tables}


def plan_row(path: Path, plan_id: int) -> tuple[int, int]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT accepted, acquired FROM exposureplan WHERE Id = ?",
                          (plan_id,)).fetchone()


def light(number: int, rig: str, target: str, panel: str, filt: str, exposure: float,
          night: str = "2026-12-03") -> AcceptedLight:
    return AcceptedLight(path=f"/data/{rig}/20_Data/{target}/{number}.fits",
                         checksum=f"{number:064x}", rig=rig, camera=rig.split("+")[1],
                         optic=rig.split("@")[0], filter=filt, target=target, panel=panel,
                         night=night, exposure_s=exposure, hfr=2.0, rms_arcsec=0.6)


@pytest.fixture
def accepted(tmp_path: Path) -> list[AcceptedCount]:
    db = AcceptedDB(tmp_path / "phd")
    lights = ([light(i, RIG_A, "M33", "A", "L", 300) for i in range(9)]
              + [light(100 + i, RIG_A, "M33", "B", "L", 300) for i in range(4)]
              + [light(200 + i, RIG_A, "NGC 7000", "", "H", 600, f"2026-12-0{1 + i % 3}")
                 for i in range(6)]
              + [light(300 + i, RIG_B, "NGC 7000", "", "LeXtr", 180) for i in range(11)]
              + [light(400 + i, RIG_A, "IC 1396", "", "H", 600) for i in range(2)])
    assert db.record(lights) == len(lights)
    assert db.record(lights) == 0  # recording again changes nothing
    return db.counts()


def test_accepted_counts_are_written_and_nothing_else_changes(
        tmp_path: Path, accepted: list[AcceptedCount]) -> None:
    database = make_scheduler_db(tmp_path / "schedulerdb.sqlite")
    before = dump(database)
    plan = plan_sync(database, accepted, {RIG_A: PROFILE_A, RIG_B: PROFILE_B})
    assert dump(database) == before  # planning writes nothing
    assert {c.plan_id: (c.accepted_before, c.accepted_after) for c in plan.changes} == {
        1: (0, 9), 2: (7, 4), 3: (2, 6), 5: (0, 11)}
    assert [(c.target, c.count) for c in plan.unmatched] == [("IC 1396", 2)]
    backup = apply_sync(plan)
    assert backup is not None
    assert dump(backup) == before
    after = dump(database)
    expected = {plan_id: accepted for plan_id, accepted in ((1, 9), (2, 4), (3, 6), (5, 11))}
    for table, rows in before.items():
        if table != "exposureplan":
            assert after[table] == rows, table
    for old, new in zip(before["exposureplan"], after["exposureplan"], strict=True):
        plan_id, accepted_column = old[0], 5
        want = list(old)
        if plan_id in expected:
            want[accepted_column] = expected[plan_id]
        assert list(new) == want
    # Plan 4 had no accepted lights here: it keeps what the user set.
    assert plan_row(database, 4) == (5, 0)
    again = plan_sync(database, accepted, {RIG_A: PROFILE_A, RIG_B: PROFILE_B})
    assert again.changes == ()
    assert apply_sync(again) is None
    assert len(list(tmp_path.glob("schedulerdb.phdserver-backup-*"))) == 1


def test_acquired_is_written_only_when_asked(tmp_path: Path,
                                             accepted: list[AcceptedCount]) -> None:
    database = make_scheduler_db(tmp_path / "schedulerdb.sqlite")
    apply_sync(plan_sync(database, accepted, {RIG_A: PROFILE_A, RIG_B: PROFILE_B},
                         write_acquired=True))
    assert plan_row(database, 1) == (9, 9)


def test_an_unmapped_rig_matching_two_profiles_changes_nothing_for_it(
        tmp_path: Path) -> None:
    database = make_scheduler_db(tmp_path / "schedulerdb.sqlite")
    with closing(sqlite3.connect(database)) as db:  # profile B also plans NGC 7000 in H 600 s
        db.execute("INSERT INTO exposuretemplate (Id, profileId, name, filtername, "
                   "defaultexposure) VALUES (4, ?, 'Ha', 'H', 600)", (PROFILE_B,))
        db.execute("INSERT INTO exposureplan VALUES (6, ?, -1, 10, 0, 0, 4, 4, 1, NULL)",
                   (PROFILE_B,))
        db.commit()
    counts = [AcceptedCount(rig=RIG_A, target="NGC 7000", panel="", filter="H",
                            exposure_s=600, count=6, seconds=3600)]
    plan = plan_sync(database, counts)
    assert plan.changes == ()
    assert len(plan.ambiguous) == 1
    assert "2 N.I.N.A. profiles" in plan.ambiguous[0]
    mapped = plan_sync(database, counts, {RIG_A: PROFILE_A})
    assert [(c.plan_id, c.accepted_after) for c in mapped.changes] == [(3, 6)]


@pytest.mark.parametrize(("schema", "message"), [
    (SCHEMA.replace("user_version = 23", "user_version = 24"), "newer than the 23"),
    (SCHEMA.replace("desired INTEGER, ", ""), "lacks desired"),
])
def test_an_unknown_schema_is_refused_before_anything_is_touched(
        tmp_path: Path, accepted: list[AcceptedCount], schema: str, message: str) -> None:
    database = tmp_path / "schedulerdb.sqlite"
    with closing(sqlite3.connect(database)) as db:
        db.executescript(schema)  # the schema is checked before any row is read
    original = database.read_bytes()
    with pytest.raises(SchedulerError, match=message):
        plan_sync(database, accepted, {RIG_A: PROFILE_A})
    assert database.read_bytes() == original
    assert list(tmp_path.glob("*backup*")) == []


def test_a_plan_changed_by_nina_between_plan_and_write_rolls_everything_back(
        tmp_path: Path, accepted: list[AcceptedCount]) -> None:
    database = make_scheduler_db(tmp_path / "schedulerdb.sqlite")
    plan = plan_sync(database, accepted, {RIG_A: PROFILE_A, RIG_B: PROFILE_B})
    with closing(sqlite3.connect(database)) as db:
        db.execute("UPDATE exposureplan SET acquired = acquired + 1 WHERE Id = 5")
        db.commit()
    between = dump(database)
    with pytest.raises(SchedulerError, match="exposure plan 5"):
        apply_sync(plan)
    assert dump(database) == between


def test_a_missing_database_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(SchedulerError, match="no such file"):
        plan_sync(tmp_path / "nope.sqlite", [])
    assert not (tmp_path / "nope.sqlite").exists()


def test_the_command_line_dry_run_writes_nothing_and_the_sync_writes(tmp_path: Path) -> None:
    from phdserver.cli import main

    data = tmp_path / "phd"
    AcceptedDB(data).record([light(i, RIG_A, "M33", "A", "L", 300) for i in range(3)])
    database = make_scheduler_db(tmp_path / "schedulerdb.sqlite")
    before = database.read_bytes()
    common = ["scheduler", "sync", str(database), "--data-dir", str(data),
              "--profile", f"{RIG_A}={PROFILE_A}"]
    assert main([*common, "--dry-run", "--json"]) == 0
    assert database.read_bytes() == before
    assert main(common) == 0
    assert plan_row(database, 1) == (3, 12)
    assert main(["scheduler", "sync", str(tmp_path / "missing.sqlite"), "--data-dir",
                 str(data)]) == 2
