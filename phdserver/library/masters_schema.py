"""The SQLite schema of the master-frame library: migrations, and rows to records and back.

``schema_version`` holds one row; :data:`MIGRATIONS` lists the statements that take version
``i`` to ``i + 1``; :func:`migrate` runs the missing ones in one ``BEGIN IMMEDIATE``
transaction, so two processes opening an old file migrate it once, and refuses a file from a
newer phdserver.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

from phdserver.errors import LibraryError
from phdserver.library.fits_headers import FrameMetadata, FrameType
from phdserver.library.master_records import MasterRecord, Origin

__all__ = ["MIGRATIONS", "migrate", "record_from_row", "row_values"]

_META_COLUMNS = (
    "camera", "optic", "exposure_s", "set_temp_c", "ccd_temp_c", "binning_x", "binning_y",
    "gain", "offset", "readout_mode", "filter", "width", "height",
)
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 0 -> 1
        """CREATE TABLE masters (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            frame_type TEXT NOT NULL, path TEXT NOT NULL, hdu INTEGER NOT NULL DEFAULT 0,
            camera TEXT, optic TEXT, exposure_s REAL, set_temp_c REAL, ccd_temp_c REAL,
            binning_x INTEGER, binning_y INTEGER, gain REAL, "offset" REAL, readout_mode TEXT,
            filter TEXT, width INTEGER, height INTEGER, date_obs TEXT, night TEXT,
            bias_subtracted INTEGER NOT NULL DEFAULT 0, sources TEXT NOT NULL DEFAULT '{}',
            size_bytes INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, checksum TEXT NOT NULL,
            imported_at TEXT NOT NULL, origin TEXT NOT NULL,
            UNIQUE (path, hdu))""",
        "CREATE INDEX masters_by_type ON masters (frame_type)",
        "CREATE INDEX masters_by_checksum ON masters (checksum)",
    ),
)
"""``MIGRATIONS[i]`` takes a database from schema version ``i`` to ``i + 1``. Append only."""


def migrate(conn: sqlite3.Connection, migrations: Sequence[Sequence[str]] = MIGRATIONS) -> int:
    """Bring the schema to ``len(migrations)``; return the version found before.

    Raises
    ------
    LibraryError
        The file's schema is newer than this code knows.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (0)")
        found = int(row[0]) if row is not None else 0
        _refuse_newer(found, len(migrations))
        for version in range(found, len(migrations)):
            for statement in migrations[version]:
                conn.execute(statement)
        if found != len(migrations):  # an up-to-date file is not written to at all
            conn.execute("UPDATE schema_version SET version = ?", (len(migrations),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found


def _refuse_newer(found: int, known: int) -> None:
    if found > known:
        raise LibraryError(
            f"The master library uses schema version {found}, newer than this phdserver "
            f"knows ({known}); upgrade phdserver."
        )


def row_values(meta: FrameMetadata) -> dict[str, Any]:
    """The column values of ``meta`` (frame type, metadata, night, sources as JSON)."""
    values: dict[str, Any] = {name: getattr(meta, name) for name in _META_COLUMNS}
    values.update(
        frame_type=meta.frame_type.value if meta.frame_type else None,
        date_obs=meta.date_obs.isoformat() if meta.date_obs else None,
        night=meta.night.isoformat() if meta.night else None,
        bias_subtracted=int(meta.bias_subtracted),
        sources=json.dumps(dict(meta.sources)),
    )
    return values


def record_from_row(row: sqlite3.Row) -> MasterRecord:
    """The :class:`MasterRecord` a ``masters`` row stores."""
    frame_type = FrameType(row["frame_type"])
    meta = FrameMetadata(
        frame_type=frame_type,
        is_master=True,
        date_obs=datetime.fromisoformat(row["date_obs"]) if row["date_obs"] else None,
        night=date.fromisoformat(row["night"]) if row["night"] else None,
        bias_subtracted=bool(row["bias_subtracted"]),
        sources=tuple(sorted(json.loads(row["sources"]).items())),
        **{name: row[name] for name in _META_COLUMNS},
    )
    return MasterRecord(
        id=int(row["id"]), frame_type=frame_type, path=Path(row["path"]), hdu=int(row["hdu"]),
        meta=meta, size_bytes=int(row["size_bytes"]), mtime_ns=int(row["mtime_ns"]),
        checksum=row["checksum"], imported_at=datetime.fromisoformat(row["imported_at"]),
        origin=Origin(row["origin"]),
    )
