"""Write accepted counts into N.I.N.A.'s Target Scheduler database (``schedulerdb.sqlite``).

The plugin decides what to shoot next from ``exposureplan.desired`` and ``accepted``; after a
night is culled and accepted, the accepted counts must reach it. The workflow's script did
this with no backup, a commit per row, the template's *name* as the filter, and a 2×-desired
trick (reference/data-management-details.md §1.10, §3). Here:

* a plan is matched on its target's name (``"M33 Panel A"`` for panel A of a mosaic), its
  exposure template's ``filtername``, its effective exposure (the plan's, or the template's
  ``defaultexposure`` when the plan says -1) and, when the rig is mapped to a N.I.N.A.
  profile, the plan's ``profileId``. An unmapped rig whose counts match plans of two profiles
  is reported as ambiguous and changes nothing;
* only ``accepted`` is written (``acquired`` too when asked), only where it changes, and only
  for plans with accepted lights: a plan we know nothing about keeps what the user set;
* the schema is checked first: a ``user_version`` newer than the plugin's we know, or a table
  or column missing, is an error before anything is touched;
* the database is backed up beside itself (SQLite's online backup, a new file, never an
  overwrite), then every change is made in one ``BEGIN IMMEDIATE`` transaction with a busy
  timeout, each ``UPDATE`` guarded by the value we read: if N.I.N.A. changed a plan in
  between, the whole transaction is rolled back and the error says which plan.

Blocking (SQLite): call from a worker thread.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from .accepted_db import AcceptedCount

__all__ = [
    "KNOWN_SCHEMA_VERSION",
    "PlanChange",
    "SchedulerError",
    "SyncPlan",
    "apply_sync",
    "plan_sync",
    "ts_target_name",
]

KNOWN_SCHEMA_VERSION: Final = 23
"""The newest Target Scheduler migration (``PRAGMA user_version``) this code was written for."""
_REQUIRED_COLUMNS: Final = {
    "project": {"id", "profileid", "name"},
    "target": {"id", "projectid", "name"},
    "exposuretemplate": {"id", "profileid", "filtername", "defaultexposure"},
    "exposureplan": {"id", "profileid", "targetid", "exposuretemplateid", "exposure",
                     "desired", "acquired", "accepted"},
}
_BUSY_TIMEOUT_S: Final = 15.0
_EXPOSURE_TOLERANCE_S: Final = 1e-3


class SchedulerError(Exception):
    """The database cannot be synced (schema, ambiguity, a concurrent change): nothing was
    written."""


def ts_target_name(target: str, panel: str) -> str:
    """The Target Scheduler's name for a target or a mosaic panel ("M33 Panel A")."""
    return f"{target} Panel {panel}" if panel else target


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanChange:
    plan_id: int
    profile_id: str
    project: str
    target: str
    filter: str
    exposure_s: float
    desired: int
    accepted_before: int
    accepted_after: int
    acquired_before: int
    acquired_after: int

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncPlan:
    """What a sync would change, and what it could not place."""

    database: Path
    schema_version: int
    changes: tuple[PlanChange, ...]
    unchanged: int
    unmatched: tuple[AcceptedCount, ...] = ()
    """Accepted lights with no exposure plan (a target the scheduler does not know)."""
    ambiguous: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "database": str(self.database), "schema_version": self.schema_version,
            "changes": [c.to_json() for c in self.changes], "unchanged": self.unchanged,
            "unmatched": [{"rig": c.rig, "target": c.target, "panel": c.panel,
                           "filter": c.filter, "exposure_s": c.exposure_s, "count": c.count}
                          for c in self.unmatched],
            "ambiguous": list(self.ambiguous),
        }


@dataclass(frozen=True, slots=True)
class _Plan:
    id: int
    profile_id: str
    project: str
    target: str
    filter: str
    exposure_s: float
    desired: int
    acquired: int
    accepted: int


def _connect(database: Path) -> sqlite3.Connection:
    if not database.is_file():
        raise SchedulerError(f"{database}: no such file")
    # mode=rw: never create a database that is not there.
    return sqlite3.connect(f"file:{database}?mode=rw", uri=True, timeout=_BUSY_TIMEOUT_S,
                           isolation_level=None)


def _check_schema(db: sqlite3.Connection, database: Path) -> int:
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > KNOWN_SCHEMA_VERSION:
        raise SchedulerError(
            f"{database}: Target Scheduler schema {version} is newer than the "
            f"{KNOWN_SCHEMA_VERSION} phdserver knows; nothing written (update phdserver)")
    for table, wanted in _REQUIRED_COLUMNS.items():
        columns = {row[1].lower() for row in db.execute(f'PRAGMA table_info("{table}")')}
        if not columns:
            raise SchedulerError(f"{database}: no table {table}: not a Target Scheduler "
                                 "database (or one too old); nothing written")
        missing = sorted(wanted - columns)
        if missing:
            raise SchedulerError(f"{database}: table {table} lacks {', '.join(missing)} "
                                 f"(schema {version}); nothing written")
    return version


def _plans(db: sqlite3.Connection) -> list[_Plan]:
    rows = db.execute(
        "SELECT ep.Id, ep.profileId, p.name, t.name, et.filtername, "
        "CASE WHEN ep.exposure > 0 THEN ep.exposure ELSE et.defaultexposure END, "
        "ep.desired, ep.acquired, ep.accepted "
        "FROM exposureplan ep "
        "JOIN exposuretemplate et ON et.Id = ep.exposureTemplateId "
        "JOIN target t ON t.Id = ep.targetid "
        "JOIN project p ON p.Id = t.projectid "
        "ORDER BY ep.Id")
    return [_Plan(int(i), str(prof), str(proj), str(t), str(f), float(e or 0), int(d or 0),
                  int(acq or 0), int(acc or 0))
            for i, prof, proj, t, f, e, d, acq, acc in rows]


def plan_sync(database: Path, counts: Iterable[AcceptedCount],
              profile_ids: Mapping[str, str] | None = None, *,
              write_acquired: bool = False) -> SyncPlan:
    """Read the database and work out the changes (writes nothing)."""
    profile_ids = profile_ids or {}
    with closing(_connect(database)) as db:
        version = _check_schema(db, database)
        plans = _plans(db)
    by_key: dict[tuple[str, str], list[_Plan]] = defaultdict(list)
    for plan in plans:
        by_key[(plan.target.casefold(), plan.filter.casefold())].append(plan)
    accepted: dict[int, int] = defaultdict(int)
    unmatched: list[AcceptedCount] = []
    ambiguous: list[str] = []
    for count in counts:
        name = ts_target_name(count.target, count.panel)
        candidates = [p for p in by_key.get((name.casefold(), count.filter.casefold()), [])
                      if abs(p.exposure_s - count.exposure_s) <= _EXPOSURE_TOLERANCE_S]
        profile = profile_ids.get(count.rig)
        if profile is not None:
            candidates = [p for p in candidates if p.profile_id == profile]
        if not candidates:
            unmatched.append(count)
            continue
        if len({p.profile_id for p in candidates}) > 1:
            ambiguous.append(f"{count.rig}: {name} {count.filter} {count.exposure_s:g} s matches "
                             f"plans of {len({p.profile_id for p in candidates})} N.I.N.A. "
                             "profiles; map the rig to its profile")
            continue
        for plan in candidates:
            accepted[plan.id] += count.count
    changes: list[PlanChange] = []
    unchanged = 0
    for plan in plans:
        if plan.id not in accepted:
            continue
        new = accepted[plan.id]
        acquired = new if write_acquired else plan.acquired
        if new == plan.accepted and acquired == plan.acquired:
            unchanged += 1
            continue
        changes.append(PlanChange(
            plan_id=plan.id, profile_id=plan.profile_id, project=plan.project,
            target=plan.target, filter=plan.filter, exposure_s=plan.exposure_s,
            desired=plan.desired, accepted_before=plan.accepted, accepted_after=new,
            acquired_before=plan.acquired, acquired_after=acquired))
    return SyncPlan(database=database, schema_version=version, changes=tuple(changes),
                    unchanged=unchanged, unmatched=tuple(unmatched), ambiguous=tuple(ambiguous))


def _backup(database: Path, db: sqlite3.Connection) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for number in range(1, 100):
        suffix = "" if number == 1 else f"-{number}"
        target = database.with_name(f"{database.stem}.phdserver-backup-{stamp}{suffix}"
                                    f"{database.suffix}")
        try:
            target.open("xb").close()  # claim the name: never overwrite a file
        except FileExistsError:
            continue
        with closing(sqlite3.connect(target)) as copy:
            db.backup(copy)
        return target
    raise SchedulerError(f"no free backup name beside {database}")


def apply_sync(plan: SyncPlan) -> Path | None:
    """Back up the database and make the planned changes in one transaction.

    Returns the backup's path (None when there was nothing to change). If any plan no longer
    holds the value it was planned from, nothing is written and SchedulerError says which.
    """
    if not plan.changes:
        return None
    with closing(_connect(plan.database)) as db:
        _check_schema(db, plan.database)
        backup = _backup(plan.database, db)
        db.execute("BEGIN IMMEDIATE")
        try:
            for change in plan.changes:
                _write_change(db, change)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return backup


def _write_change(db: sqlite3.Connection, change: PlanChange) -> None:
    """One plan's update, guarded by the values it was planned from."""
    cursor = db.execute(
        "UPDATE exposureplan SET accepted = ?, acquired = ? "
        "WHERE Id = ? AND accepted = ? AND acquired = ?",
        (change.accepted_after, change.acquired_after, change.plan_id,
         change.accepted_before, change.acquired_before))
    if cursor.rowcount != 1:
        raise SchedulerError(
            f"exposure plan {change.plan_id} ({change.target} {change.filter}) changed while "
            "syncing (N.I.N.A. running?); nothing written, plan again")
