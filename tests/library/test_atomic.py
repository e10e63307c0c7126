"""The "nothing lost" rule: a file is the old one or the new one, never a mixture or nothing."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

import pytest

from phdserver.library import atomic
from phdserver.library.atomic import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    create_exclusive,
    remove_stale_temp_files,
)

OLD = b"SIMPLE  = previous library, precious\n" * 100


class Boom(BaseException):
    """Stands for trio.Cancelled: a BaseException delivered while writing."""


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_atomic_write_replaces_content_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "lib.fit"
    target.write_bytes(OLD)
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert _listing(tmp_path) == ["lib.fit"]


def test_atomic_write_creates_missing_directories(tmp_path: Path) -> None:
    target = tmp_path / "a" / "darks_defects" / "x.txt"
    atomic_write_text(target, "1 2\n")
    assert target.read_bytes() == b"1 2\n"


def test_text_is_utf8_without_newline_translation(tmp_path: Path) -> None:
    target = tmp_path / "map.txt"
    atomic_write_text(target, "# Camera: caméra\n1 2\n")
    assert target.read_bytes() == "# Camera: caméra\n1 2\n".encode()


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt, Boom])
def test_writer_failure_midway_keeps_previous_file(tmp_path: Path, exc_type: type) -> None:
    target = tmp_path / "lib.fit"
    target.write_bytes(OLD)
    before = os.stat(target)

    def write(f: BinaryIO) -> None:
        f.write(b"half of a new file")
        f.flush()
        raise exc_type("disk full")

    with pytest.raises(exc_type):
        atomic_write(target, write)
    assert target.read_bytes() == OLD
    assert os.stat(target).st_ino == before.st_ino
    assert _listing(tmp_path) == ["lib.fit"]


def test_writer_failure_without_previous_file_creates_nothing(tmp_path: Path) -> None:
    def write(f: BinaryIO) -> None:
        f.write(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(tmp_path / "lib.fit", write)
    assert _listing(tmp_path) == []


def test_failed_rename_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "lib.fit"
    target.write_bytes(OLD)

    def refuse(src: object, dst: object) -> None:
        raise Boom

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(Boom):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == OLD
    assert _listing(tmp_path) == ["lib.fit"]


def test_temp_file_is_hidden_in_the_same_directory(tmp_path: Path) -> None:
    target = tmp_path / "lib.fit"
    seen: list[Path] = []

    def write(f: BinaryIO) -> None:
        seen.extend(p for p in tmp_path.iterdir())
        f.write(b"data")

    atomic_write(target, write)
    assert len(seen) == 1
    assert seen[0].parent == tmp_path
    assert seen[0].name.startswith(".lib.fit.tmp-")


def test_permissions_of_previous_file_are_kept(tmp_path: Path) -> None:
    target = tmp_path / "lib.fit"
    target.write_bytes(OLD)
    target.chmod(0o640)
    atomic_write_bytes(target, b"new")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640


def test_create_exclusive_creates_a_complete_file(tmp_path: Path) -> None:
    target = tmp_path / "frame.fit"
    create_exclusive(target, lambda f: f.write(b"image") and None)
    assert target.read_bytes() == b"image"
    assert _listing(tmp_path) == ["frame.fit"]


def test_create_exclusive_refuses_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "frame.fit"
    target.write_bytes(OLD)
    called = False

    def write(f: BinaryIO) -> None:
        nonlocal called
        called = True

    with pytest.raises(FileExistsError):
        create_exclusive(target, write)
    assert not called
    assert target.read_bytes() == OLD
    assert _listing(tmp_path) == ["frame.fit"]


def test_create_exclusive_loses_the_race_without_overwriting(tmp_path: Path) -> None:
    target = tmp_path / "frame.fit"

    def write(f: BinaryIO) -> None:
        target.write_bytes(OLD)  # the user's file appears while we write
        f.write(b"ours")

    with pytest.raises(FileExistsError):
        create_exclusive(target, write)
    assert target.read_bytes() == OLD
    assert _listing(tmp_path) == ["frame.fit"]


def test_create_exclusive_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(atomic.os, "link", no_link)
    target = tmp_path / "frame.fit"
    create_exclusive(target, lambda f: f.write(b"image") and None)
    assert target.read_bytes() == b"image"
    assert _listing(tmp_path) == ["frame.fit"]
    with pytest.raises(FileExistsError):
        create_exclusive(target, lambda f: f.write(b"other") and None)
    assert target.read_bytes() == b"image"


def test_create_exclusive_writer_failure_leaves_nothing(tmp_path: Path) -> None:
    def write(f: BinaryIO) -> None:
        f.write(b"x")
        raise Boom

    with pytest.raises(Boom):
        create_exclusive(tmp_path / "frame.fit", write)
    assert _listing(tmp_path) == []


def test_remove_stale_temp_files_removes_only_ours(tmp_path: Path) -> None:
    ours = [tmp_path / ".PHD2_dark_lib_1.fit.tmp-0123abcd", tmp_path / ".m.txt.tmp-ffffffff"]
    theirs = [
        tmp_path / "PHD2_dark_lib_1.fit",
        tmp_path / ".PHD2_dark_lib_1.fit.tmp-notours!",
        tmp_path / "x.fit.tmp-0123abcd",  # not hidden: a user's file
    ]
    for p in ours + theirs:
        p.write_bytes(b"x")
    (tmp_path / ".d.tmp-01234567").mkdir()  # a directory, never removed
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(removed) == sorted(ours)
    assert _listing(tmp_path) == sorted([p.name for p in theirs] + [".d.tmp-01234567"])


def test_remove_stale_temp_files_respects_min_age(tmp_path: Path) -> None:
    old = tmp_path / ".a.fit.tmp-00000000"
    new = tmp_path / ".b.fit.tmp-11111111"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    os.utime(old, (1_000_000, 1_000_000))
    assert remove_stale_temp_files(tmp_path, min_age_s=3600) == (old,)
    assert new.exists()


def test_remove_stale_temp_files_missing_directory(tmp_path: Path) -> None:
    assert remove_stale_temp_files(tmp_path / "nope") == ()


class _Statvfs:
    def __init__(self, free_bytes: int) -> None:
        self.f_bavail, self.f_frsize = free_bytes // 4096, 4096


@pytest.mark.parametrize(("message", "free_bytes"), [
    ("4194304 requested and 2092000 written", 0),  # numpy's short write on a full disk
    ("Not enough free space to write 33554432 bytes after offset 512", 15 << 20),
])
def test_a_full_disk_is_named_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      message: str, free_bytes: int) -> None:
    target = tmp_path / "lib.fit"
    target.write_bytes(OLD)
    monkeypatch.setattr(atomic.os, "statvfs", lambda _: _Statvfs(free_bytes))

    def write(f: BinaryIO) -> None:
        f.write(b"part of it")
        raise OSError(message)

    with pytest.raises(OSError, match="No space left on device") as caught:
        atomic_write(target, write)
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(target)
    assert str(caught.value.__cause__) == message  # what the library said is kept
    assert target.read_bytes() == OLD
    assert _listing(tmp_path) == ["lib.fit"]


def test_other_write_errors_pass_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic.os, "statvfs", lambda _: _Statvfs(1 << 30))

    def write(f: BinaryIO) -> None:
        raise OSError("the cable came out")

    with pytest.raises(OSError, match="the cable came out") as caught:
        atomic_write(tmp_path / "lib.fit", write)
    assert caught.value.errno is None
    assert _listing(tmp_path) == []
