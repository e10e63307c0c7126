"""Writing files so that nothing is ever lost: a file is either the old one or the new one.

A dark library takes an hour of exposures to build; a half-written FITS file left by a crash, a
full disk or a cancelled save would destroy the previous library too. Every file this package
writes therefore goes through :func:`atomic_write`: the bytes go to a temporary file in the
*same directory* (so the final ``os.replace`` is a rename within one file system, which POSIX
makes atomic), the data are fsynced before the rename and the directory after it, so that after
a power cut the name points at either the complete old file or the complete new one.

Error and resource policy: on any exception, including ``BaseException`` such as
``KeyboardInterrupt`` or a trio ``Cancelled`` delivered into the writer, the temporary file is
removed and the exception propagates unchanged; the target is untouched byte for byte. Only a
SIGKILL (or power cut) between creating the temporary file and renaming it can leave one behind;
:func:`remove_stale_temp_files` sweeps those at start-up. Temporary names look like
``.{name}.tmp-{8 hex digits}``: hidden, and never the name of a user's file.

:func:`create_exclusive` is the "never overwrite a user's file" variant used when a client names
the output path: the complete file appears under its name or the call fails with
``FileExistsError``.

Everything here is synchronous and blocking; async callers run it in ``trio.to_thread``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "create_exclusive",
    "remove_stale_temp_files",
]

_FULL_BELOW_BYTES = 1 << 20
"""Less free space than this after a failed write counts as a full disk."""
_TEMP_MARK = ".tmp-"
_TEMP_RE = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$")
_NEW_FILE_MODE = 0o666  # the kernel applies the process umask, as for any ordinary file
# errno values meaning "this file system cannot fsync a directory / hard-link": not failures.
_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.ENOSYS})


def atomic_write(path: Path, write: Callable[[BinaryIO], None], *,
                 durable: bool = True) -> None:
    """Replace ``path`` with what ``write`` writes, atomically and durably.

    ``write`` receives a binary file open for writing; it must not close it. The directory is
    created if missing. When ``path`` already exists its permission bits are kept.

    ``durable=False`` skips the fsyncs (the rename is still atomic): for bulk outputs such as
    calibrated lights, whose writer syncs once at the end of a batch instead of per file.
    Library files always use the default.
    """
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    mode = _existing_mode(path)
    tmp = _write_temp(directory, path.name, write, mode, durable=durable)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if durable:
        _fsync_directory(directory)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """:func:`atomic_write` of a bytes object."""

    def write(f: BinaryIO) -> None:
        f.write(data)

    atomic_write(path, write)


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write` of UTF-8 text, with no newline translation (``\\n`` stays LF)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def create_exclusive(path: Path, write: Callable[[BinaryIO], None], *,
                     durable: bool = True) -> None:
    """Create ``path`` with what ``write`` writes, failing if it exists; never overwrite.

    ``durable=False`` skips the fsyncs, as for :func:`atomic_write`.

    The file is written and fsynced under a temporary name and then hard-linked to ``path``:
    ``link`` fails with ``FileExistsError`` if the name is taken (even if it appeared while we
    were writing), and otherwise makes the complete file appear at once.

    On file systems without hard links (FAT, exFAT, some network mounts) the name is reserved
    with ``O_CREAT | O_EXCL`` and the temporary file renamed over the placeholder we own; a
    reader may then briefly see an empty file, but a user's file is still never overwritten.

    Raises
    ------
    FileExistsError
        ``path`` exists (checked first, so no time is spent writing, and again at the link).
    """
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, "File exists", str(path))
    tmp = _write_temp(directory, path.name, write, None, durable=durable)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED and exc.errno != errno.EMLINK:
                raise
            _reserve_then_replace(tmp, path)
        else:
            _unlink_quietly(tmp)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if durable:
        _fsync_directory(directory)


def remove_stale_temp_files(directory: Path, *, min_age_s: float = 0.0) -> tuple[Path, ...]:
    """Delete temporary files left by an interrupted save (a SIGKILL or a power cut).

    Only regular files whose name matches our own pattern ``.{name}.tmp-{8 hex digits}`` are
    touched. Call it when no save is in progress in ``directory`` (at start-up), or pass
    ``min_age_s`` so that files modified more recently than that are left alone.

    Returns the paths removed; a missing directory removes nothing.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return ()
    now = time.time()
    for entry in entries:
        if not _TEMP_RE.match(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if min_age_s > 0 and now - entry.stat(follow_symlinks=False).st_mtime < min_age_s:
                continue
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        removed.append(Path(entry.path))
    return tuple(removed)


def _write_temp(
    directory: Path, name: str, write: Callable[[BinaryIO], None], mode: int | None, *,
    durable: bool = True,
) -> Path:
    """Create a fresh temporary file, run ``write`` on it, flush and fsync; return its path."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = directory / f".{name}{_TEMP_MARK}{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, flags, _NEW_FILE_MODE)
        except FileExistsError:
            continue
        break
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
    except OSError as exc:
        full = exc.errno is None and _out_of_space(directory, exc)  # before the unlink
        _unlink_quietly(tmp)
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / name)) from exc
        raise
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _out_of_space(directory: Path, exc: OSError) -> bool:
    """Whether a write failed, without an errno, because the disk is full.

    numpy and astropy report a full disk in their own words and without an errno: a short write
    ("4194304 requested and 2092000 written", leaving the filesystem with next to no room) or a
    refused preallocation ("Not enough free space to write 33554432 bytes after offset ...",
    leaving room, but not enough). A full disk is what the user can act on, so it is named.
    """
    if "space" in str(exc).lower():
        return True
    try:
        stats = os.statvfs(directory)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < _FULL_BELOW_BYTES


def _reserve_then_replace(tmp: Path, path: Path) -> None:
    """Fallback for ``create_exclusive`` where ``link`` is unsupported."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _NEW_FILE_MODE)
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(path)  # the empty placeholder is ours
        raise


def _existing_mode(path: Path) -> int | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable. File systems that cannot fsync a directory are not an error."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        if exc.errno in _UNSUPPORTED or exc.errno == errno.EACCES:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
