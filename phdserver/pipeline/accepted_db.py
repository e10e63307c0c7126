"""The accepted-data database: every light a person (or ``accept``) accepted, one row each.

The data-management workflow keeps counts per folder in ``astrophotography.sqlite`` and drifts
(the same camera under two names, rows for folders that moved; reference/data-management-
details.md §1.9). Here a row is one file, keyed by its path and checksum, with the properties
that later steps group by (rig, camera, optic, filter, target, panel, night, exposure) and the
quality figures culling used (HFR, RMS). Counts are derived by queries, never stored, so they
cannot drift from the rows; recording the same file twice changes nothing.

SQLite in the data directory (``accepted.sqlite``), WAL, a busy timeout, one transaction per
call. Blocking: call from a worker thread.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Final

__all__ = ["ACCEPTED_DB_NAME", "AcceptedCount", "AcceptedDB", "AcceptedLight"]

ACCEPTED_DB_NAME: Final = "accepted.sqlite"
SCHEMA_VERSION: Final = 1
_BUSY_TIMEOUT_MS: Final = 10_000

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS accepted_light (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    checksum TEXT NOT NULL,
    rig TEXT NOT NULL,
    camera TEXT NOT NULL,
    optic TEXT NOT NULL,
    filter TEXT NOT NULL,
    target TEXT NOT NULL,
    panel TEXT NOT NULL,
    night TEXT NOT NULL,
    exposure_s REAL NOT NULL,
    temperature_c REAL,
    gain INTEGER,
    offset INTEGER,
    hfr REAL,
    rms_arcsec REAL,
    accepted_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS accepted_by_plan
    ON accepted_light (rig, target, panel, filter, exposure_s);
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptedLight:
    """One accepted light. ``panel`` is "" for a target that is not a mosaic; ``night`` the
    evening's date, ``YYYY-MM-DD``."""

    path: str
    checksum: str
    rig: str
    camera: str
    optic: str
    filter: str
    target: str
    panel: str
    night: str
    exposure_s: float
    temperature_c: float | None = None
    gain: int | None = None
    offset: int | None = None
    hfr: float | None = None
    rms_arcsec: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptedCount:
    """How many lights were accepted for one plan signature, and their total time."""

    rig: str
    target: str
    panel: str
    filter: str
    exposure_s: float
    count: int
    seconds: float


_COLUMNS: Final = tuple(f.name for f in fields(AcceptedLight))


class AcceptedDB:
    """The database file in ``data_dir`` (created on first use)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / ACCEPTED_DB_NAME
        data_dir.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} was written by a newer phdserver (schema "
                                   f"{version}; this one knows {SCHEMA_VERSION})")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000)) as db:
            db.execute("PRAGMA journal_mode = WAL")
            with db:  # one transaction: committed on success, rolled back on error
                yield db

    def record(self, lights: Iterable[AcceptedLight]) -> int:
        """Add lights not yet recorded; returns how many were new. A path recorded before
        with another checksum is updated (the file was replaced by a new accept)."""
        added = 0
        now = time.time()
        placeholders = ",".join("?" for _ in _COLUMNS)
        with self._connect() as db:
            for light in lights:
                values = asdict(light)
                old = db.execute("SELECT checksum FROM accepted_light WHERE path = ?",
                                 (light.path,)).fetchone()
                if old is not None and old[0] == light.checksum:
                    continue
                db.execute(f"INSERT OR REPLACE INTO accepted_light ({','.join(_COLUMNS)}, "
                           f"accepted_at) VALUES ({placeholders}, ?)",
                           (*(values[c] for c in _COLUMNS), now))
                added += 1
        return added

    def forget(self, paths: Iterable[str]) -> int:
        """Remove the rows of these paths (a light moved back out of the data tree)."""
        with self._connect() as db:
            return sum(db.execute("DELETE FROM accepted_light WHERE path = ?", (p,)).rowcount
                       for p in paths)

    def lights(self) -> list[AcceptedLight]:
        with self._connect() as db:
            rows = db.execute(f"SELECT {','.join(_COLUMNS)} FROM accepted_light ORDER BY path")
            return [AcceptedLight(**dict(zip(_COLUMNS, row, strict=True))) for row in rows]

    def counts(self) -> list[AcceptedCount]:
        """Accepted lights per rig, target, panel, filter and exposure."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT rig, target, panel, filter, exposure_s, COUNT(*), SUM(exposure_s) "
                "FROM accepted_light GROUP BY rig, target, panel, filter, exposure_s "
                "ORDER BY rig, target, panel, filter, exposure_s")
            return [AcceptedCount(rig=r, target=t, panel=p, filter=f, exposure_s=e, count=n,
                                  seconds=s) for r, t, p, f, e, n, s in rows]
