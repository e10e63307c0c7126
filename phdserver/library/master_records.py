"""The records of the master-frame library (:mod:`.masters_db`): masters, checks, imports.

Plain immutable values with their JSON forms, shared by the index, the matcher and the
calibration workers; nothing here touches SQLite or a file, except :func:`file_checksum`.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from phdserver.errors import LibraryError
from phdserver.library.fits_headers import FrameMetadata, FrameType

__all__ = [
    "ImportOutcome",
    "ImportStatus",
    "MasterCheck",
    "MasterRecord",
    "Origin",
    "UnknownMaster",
    "VerifyStatus",
    "file_checksum",
]


class Origin(enum.StrEnum):
    IMPORT = "import"
    DARK_LIBRARY = "dark_library"
    DEFECT_MAP = "defect_map"


class UnknownMaster(LibraryError):
    """No master has the id the caller gave."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MasterRecord:
    """One master in the library: where it is, what it is, and its file's fingerprint."""

    id: int
    frame_type: FrameType
    path: Path
    hdu: int = 0
    meta: FrameMetadata
    size_bytes: int
    mtime_ns: int
    checksum: str
    """SHA-256 of the whole file, hex."""
    imported_at: datetime
    origin: Origin = Origin.IMPORT

    @property
    def name(self) -> str:
        """File name, with ``#hdu`` for a dark-library HDU: what headers and messages show."""
        return f"{self.path.name}#{self.hdu}" if self._multi_hdu else self.path.name

    @property
    def ref(self) -> str:
        """Full path, with ``#hdu`` for a dark-library HDU."""
        return f"{self.path}#{self.hdu}" if self._multi_hdu else str(self.path)

    @property
    def _multi_hdu(self) -> bool:
        return self.hdu != 0 or self.origin is Origin.DARK_LIBRARY

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "frame_type": self.frame_type.value,
            "path": str(self.path),
            "hdu": self.hdu,
            "name": self.name,
            "ref": self.ref,
            "size_bytes": self.size_bytes,
            "checksum": self.checksum,
            "imported_at": self.imported_at.isoformat(),
            "origin": self.origin.value,
            "meta": self.meta.to_json(),
        }


class VerifyStatus(enum.StrEnum):
    OK = "ok"
    MISSING = "missing"
    CHANGED = "changed"
    UNREADABLE = "unreadable"


@dataclass(frozen=True, slots=True, kw_only=True)
class MasterCheck:
    """The state of one master's file compared with its record."""

    record: MasterRecord
    status: VerifyStatus
    message: str

    @property
    def usable(self) -> bool:
        return self.status is VerifyStatus.OK

    def to_json(self) -> dict[str, Any]:
        return {"id": self.record.id, "ref": self.record.ref, "status": self.status.value,
                "message": self.message}


class ImportStatus(enum.StrEnum):
    ADDED = "added"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    RELOCATED = "relocated"
    DUPLICATE = "duplicate"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportOutcome:
    """What importing one file (or one HDU of it) did."""

    path: Path
    hdu: int | None
    status: ImportStatus
    message: str
    record: MasterRecord | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "hdu": self.hdu, "status": self.status.value,
                "message": self.message,
                "record": self.record.to_json() if self.record else None}


def file_checksum(path: Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
