"""The master-frame library: an SQLite index of bias, dark and flat masters in the data directory.

Each master is imported once: its header is read into a :class:`FrameMetadata` and its file is
checksummed (SHA-256: 38 ms per 64 MiB here with the CPU's SHA instructions, against 93 ms for
MD5). Nothing re-hashes a master per light, as AstroFiler does (reference/calibration.md §1a).

**Files that moved or changed are never used silently.** :meth:`MastersDB.verify` compares each
file's size and modification time with the record (a ``stat``, microseconds) and re-hashes only
when they differ: the same checksum means "touched, identical" (the record is refreshed), a
different one means ``changed``, no file means ``missing``. Callers reject masters that are not
``ok``. Importing a file whose checksum belongs to a record whose file is gone *relocates* that
record (same id), so moving a library and importing it again keeps its history; importing the
same content from a second place is reported as a ``duplicate`` and skipped, so two copies can
never tie in matching.

**What is imported.** A file whose header says it is a master (``IMAGETYP`` containing
"master", or ``NCOMBINE``/``STACKCNT`` > 1) of type bias, dark or flat, or any frame when the
caller names the type. A PHD2 dark library (several image HDUs, or named ``PHD2_dark_lib*``)
becomes one dark per HDU, referred to as ``path#hdu``. A defect map (``PHD2_defect_map*.txt``)
is registered as type ``defect_map`` for reference only.

**Schema** (:mod:`.masters_schema`): versioned, migrated at open in one transaction; a file
from a newer phdserver is refused. The records are in :mod:`.master_records`, re-exported here.

**Threads.** An SQLite connection belongs to the thread that opened it: open a
:class:`MastersDB` per call or per thread (``with MastersDB(path) as db: ...``); it is cheap.
WAL journaling lets one writer and many readers (the daemon and the CLI) share the file.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from phdserver.errors import LibraryError
from phdserver.library.defect_map import read_defect_map
from phdserver.library.fits_headers import (
    FITS_SUFFIXES,
    FrameMetadata,
    FrameType,
    read_hdu_metadata,
)
from phdserver.library.master_records import (
    ImportOutcome,
    ImportStatus,
    MasterCheck,
    MasterRecord,
    Origin,
    UnknownMaster,
    VerifyStatus,
    file_checksum,
)
from phdserver.library.masters_schema import MIGRATIONS, migrate, record_from_row, row_values

__all__ = [
    "DB_FILE_NAME",
    "MIGRATIONS",
    "ImportOutcome",
    "ImportStatus",
    "MasterCheck",
    "MasterRecord",
    "MastersDB",
    "Origin",
    "UnknownMaster",
    "VerifyStatus",
    "file_checksum",
    "migrate",
]

DB_FILE_NAME = "calibration_masters.sqlite3"

class MastersDB:
    """An open master library. Use per call or per thread, as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise LibraryError(f"Cannot open the master library {self.path}: {exc}.") from exc
        self._conn.row_factory = sqlite3.Row
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            migrate(self._conn)
        except BaseException:
            self._conn.close()
            raise

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> MastersDB:
        """The library file of a data directory."""
        return cls(Path(data_dir) / DB_FILE_NAME)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> MastersDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("SELECT version FROM schema_version").fetchone()[0])

    # --- records -------------------------------------------------------------------------------

    def list_masters(self, frame_type: FrameType | None = None) -> list[MasterRecord]:
        """All masters, or those of one type, by id."""
        if frame_type is None:
            rows = self._conn.execute("SELECT * FROM masters ORDER BY id")
        else:
            rows = self._conn.execute(
                "SELECT * FROM masters WHERE frame_type = ? ORDER BY id", (frame_type.value,)
            )
        return [record_from_row(row) for row in rows]

    def get(self, master_id: int) -> MasterRecord:
        row = self._conn.execute("SELECT * FROM masters WHERE id = ?", (master_id,)).fetchone()
        if row is None:
            raise UnknownMaster(f"No calibration master has id {master_id}.")
        return record_from_row(row)

    def add(
        self,
        *,
        path: Path,
        hdu: int = 0,
        meta: FrameMetadata,
        checksum: str,
        size_bytes: int,
        mtime_ns: int,
        origin: Origin = Origin.IMPORT,
    ) -> MasterRecord:
        """Insert a record as given (the importers below fill it from the file)."""
        if meta.frame_type is None:
            raise ValueError("a master needs a frame type")
        values = row_values(meta)
        values.update(path=str(path), hdu=hdu, checksum=checksum, size_bytes=size_bytes,
                      mtime_ns=mtime_ns, origin=origin.value,
                      imported_at=datetime.now(UTC).isoformat(timespec="seconds"))
        columns = ", ".join(f'"{k}"' for k in values)
        marks = ", ".join("?" for _ in values)
        try:
            cursor = self._conn.execute(
                f"INSERT INTO masters ({columns}) VALUES ({marks})", tuple(values.values())
            )
        except sqlite3.IntegrityError as exc:
            raise LibraryError(f"{path}#{hdu} is already in the master library.") from exc
        return self.get(int(cursor.lastrowid or 0))

    def remove(self, master_id: int) -> MasterRecord:
        """Forget a master (its file is left alone); returns the record removed."""
        record = self.get(master_id)
        self._conn.execute("DELETE FROM masters WHERE id = ?", (master_id,))
        return record

    def _update(self, master_id: int, **values: Any) -> MasterRecord:
        sets = ", ".join(f'"{k}" = ?' for k in values)
        self._conn.execute(
            f"UPDATE masters SET {sets} WHERE id = ?", (*values.values(), master_id)
        )
        return self.get(master_id)

    # --- verification --------------------------------------------------------------------------

    def verify(
        self, ids: Iterable[int] | None = None, *, refresh: bool = True
    ) -> list[MasterCheck]:
        """Check every master's file (or those in ``ids``) against its record.

        A size or mtime change triggers a re-hash; identical content is ``ok`` and, with
        ``refresh``, the stored size and mtime are updated so the next check is a ``stat`` again.
        """
        records = self.list_masters() if ids is None else [self.get(i) for i in ids]
        hashes: dict[Path, str | OSError] = {}
        checks: list[MasterCheck] = []
        for record in records:
            check = _check(record, hashes)
            if check.status is VerifyStatus.OK and refresh:
                st = _stat(record.path)
                if st is not None and (st.st_size, st.st_mtime_ns) != (
                    record.size_bytes, record.mtime_ns
                ):
                    refreshed = self._update(record.id, size_bytes=st.st_size,
                                             mtime_ns=st.st_mtime_ns)
                    check = replace(check, record=refreshed)
            checks.append(check)
        return checks

    # --- import --------------------------------------------------------------------------------

    def import_paths(
        self,
        paths: Sequence[Path],
        *,
        frame_type: FrameType | None = None,
        recursive: bool = False,
        default_longitude_deg: float | None = None,
    ) -> list[ImportOutcome]:
        """Import files, and the FITS files (and PHD2 defect maps) of directories.

        ``frame_type`` forces the type of every image (for masters whose header does not say).
        A file that cannot be read is reported as ``failed`` and the others are still imported.
        """
        outcomes: list[ImportOutcome] = []
        for path in _expand(paths, recursive=recursive):
            try:
                if path.suffix.lower() == ".txt":
                    outcomes.append(self.register_defect_map(path))
                else:
                    outcomes.extend(self.import_file(
                        path, frame_type=frame_type,
                        default_longitude_deg=default_longitude_deg,
                    ))
            except LibraryError as exc:
                outcomes.append(ImportOutcome(path=path, hdu=None, status=ImportStatus.FAILED,
                                              message=exc.message))
            except OSError as exc:
                outcomes.append(ImportOutcome(path=path, hdu=None, status=ImportStatus.FAILED,
                                              message=f"Cannot read {path}: {exc.strerror}."))
        return outcomes

    def import_file(
        self,
        path: Path,
        *,
        frame_type: FrameType | None = None,
        default_longitude_deg: float | None = None,
        origin: Origin | None = None,
    ) -> list[ImportOutcome]:
        """Import the masters of one FITS file: one outcome per image HDU."""
        path = Path(path).absolute()
        before = os.stat(path)
        hdus = read_hdu_metadata(path, default_longitude_deg=default_longitude_deg)
        if not hdus:
            return [_skip(path, None, "no 2-D image in the file")]
        is_library = len(hdus) > 1 or path.name.startswith("PHD2_dark_lib")
        if origin is None:
            origin = Origin.DARK_LIBRARY if is_library else Origin.IMPORT
        checksum = file_checksum(path)
        after = os.stat(path)
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
            raise LibraryError(f"{path} changed while it was being imported; try again.")
        outcomes = []
        with self._transaction():
            self._import_hdus(path, hdus, frame_type, origin, checksum, after, outcomes)
        return outcomes

    def _import_hdus(
        self, path: Path, hdus: list[tuple[int, FrameMetadata]], frame_type: FrameType | None,
        origin: Origin, checksum: str, after: os.stat_result, outcomes: list[ImportOutcome],
    ) -> None:
        for hdu, meta in hdus:
            kind = frame_type or meta.frame_type
            if kind is None and origin is Origin.DARK_LIBRARY:
                kind = FrameType.DARK
            if kind not in (FrameType.BIAS, FrameType.DARK, FrameType.FLAT, FrameType.DARK_FLAT):
                what = f"its type is {kind.value}" if kind else "its header names no frame type"
                outcomes.append(_skip(path, hdu, f"not a calibration master ({what}); "
                                                 "give the frame type to import it anyway"))
                continue
            if not (frame_type or meta.is_master or origin is Origin.DARK_LIBRARY):
                outcomes.append(_skip(path, hdu, f"looks like a single {kind.value} frame, not a "
                                                 "master (no 'Master' IMAGETYP, no NCOMBINE); "
                                                 "give the frame type to import it anyway"))
                continue
            meta = replace(meta, frame_type=kind, is_master=True)
            outcomes.append(self._upsert(path, hdu, meta, checksum, after, origin))

    def register_dark_library(self, path: Path) -> list[ImportOutcome]:
        """Register (or refresh) phdserver's or PHD2's dark library: one dark per HDU.

        Records of HDUs the file no longer has (a rebuilt library with fewer exposures) are
        removed.
        """
        path = Path(path).absolute()
        outcomes = self.import_file(path, frame_type=FrameType.DARK, origin=Origin.DARK_LIBRARY)
        kept = {o.hdu for o in outcomes}
        with self._transaction():
            for record in self.list_masters(FrameType.DARK):
                if record.path == path and record.hdu not in kept:
                    self.remove(record.id)
        return outcomes

    def register_defect_map(self, path: Path) -> ImportOutcome:
        """Register a PHD2 defect map (type ``defect_map``; never used to calibrate lights)."""
        path = Path(path).absolute()
        before = os.stat(path)
        contents = read_defect_map(path)
        meta = FrameMetadata(frame_type=FrameType.DEFECT_MAP, is_master=True,
                             camera=contents.header.get("Camera") or None,
                             exposure_s=_defect_exposure(contents.header))
        checksum = file_checksum(path)
        with self._transaction():
            return self._upsert(path, 0, meta, checksum, before, Origin.DEFECT_MAP)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction (taken at once, so two importers never interleave)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _upsert(
        self, path: Path, hdu: int, meta: FrameMetadata, checksum: str, st: os.stat_result,
        origin: Origin,
    ) -> ImportOutcome:
        fields = dict(row_values(meta), checksum=checksum, size_bytes=st.st_size,
                      mtime_ns=st.st_mtime_ns, origin=origin.value)
        row = self._conn.execute(
            "SELECT * FROM masters WHERE path = ? AND hdu = ?", (str(path), hdu)
        ).fetchone()
        if row is not None:
            old = record_from_row(row)
            record = self._update(old.id, **fields)
            if old.checksum == checksum:
                return ImportOutcome(path=path, hdu=hdu, status=ImportStatus.UNCHANGED,
                                     message=f"already imported as #{old.id}", record=record)
            return ImportOutcome(path=path, hdu=hdu, status=ImportStatus.UPDATED,
                                 message=f"#{old.id}: the file changed since its import on "
                                         f"{old.imported_at:%Y-%m-%d}; record refreshed",
                                 record=record)
        for twin in (record_from_row(r) for r in self._conn.execute(
            "SELECT * FROM masters WHERE checksum = ? AND hdu = ? ORDER BY id", (checksum, hdu)
        )):
            if _stat(twin.path) is None:
                record = self._update(twin.id, path=str(path), **fields)
                return ImportOutcome(path=path, hdu=hdu, status=ImportStatus.RELOCATED,
                                     message=f"#{twin.id} moved here from {twin.path}",
                                     record=record)
            return ImportOutcome(path=path, hdu=hdu, status=ImportStatus.DUPLICATE,
                                 message=f"same content as #{twin.id} ({twin.ref}); not added",
                                 record=twin)
        record = self.add(path=path, hdu=hdu, meta=meta, checksum=checksum,
                          size_bytes=st.st_size, mtime_ns=st.st_mtime_ns, origin=origin)
        return ImportOutcome(path=path, hdu=hdu, status=ImportStatus.ADDED,
                             message=f"added as #{record.id} ({meta.frame_type})", record=record)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _check(record: MasterRecord, hashes: dict[Path, str | OSError]) -> MasterCheck:
    def result(status: VerifyStatus, message: str) -> MasterCheck:
        return MasterCheck(record=record, status=status, message=message)

    since = f"since its import on {record.imported_at:%Y-%m-%d}"
    try:
        st = os.stat(record.path)
    except FileNotFoundError:
        return result(VerifyStatus.MISSING,
                      f"{record.ref} no longer exists (moved or deleted {since}); import it "
                      "from its new place (the record follows its checksum) or remove it")
    except OSError as exc:
        return result(VerifyStatus.UNREADABLE, f"cannot read {record.ref}: {exc.strerror}")
    if (st.st_size, st.st_mtime_ns) == (record.size_bytes, record.mtime_ns):
        return result(VerifyStatus.OK, "unchanged (size and modification time)")
    if record.path not in hashes:
        try:
            hashes[record.path] = file_checksum(record.path)
        except OSError as exc:
            hashes[record.path] = exc
    digest = hashes[record.path]
    if isinstance(digest, OSError):
        return result(VerifyStatus.UNREADABLE, f"cannot read {record.ref}: {digest.strerror}")
    if digest == record.checksum:
        return result(VerifyStatus.OK, "touched but identical (same SHA-256)")
    return result(VerifyStatus.CHANGED,
                  f"{record.ref} changed {since} (its SHA-256 differs); import it again to "
                  "refresh the record, or remove it")


def _skip(path: Path, hdu: int | None, message: str) -> ImportOutcome:
    return ImportOutcome(path=path, hdu=hdu, status=ImportStatus.SKIPPED, message=message)


def _expand(paths: Sequence[Path], *, recursive: bool) -> list[Path]:
    out: list[Path] = []
    for raw in paths:
        path = Path(raw).absolute()
        if not path.is_dir():
            out.append(path)
            continue
        found = path.rglob("*") if recursive else path.iterdir()
        for entry in sorted(found):
            name = entry.name.lower()
            if not entry.is_file() or name.startswith("."):
                continue
            if name.endswith(FITS_SUFFIXES) or (
                name.startswith("phd2_defect_map") and name.endswith(".txt")
            ):
                out.append(entry)
    return out


def _defect_exposure(header: dict[str, str]) -> float | None:
    try:
        return int(header["Dark Exposure Time"].removesuffix("ms").strip()) / 1000.0
    except (KeyError, ValueError):
        return None
