"""A data directory that stops answering never stalls the daemon.

The profile's files are checked with a filesystem call that blocks (as ``stat`` does on a
network share whose server went away) until the test lets it go. While it is blocked, status
polls of the dark library and the defect map are answered, other clients are answered, and no
second check of the same file is started behind the first.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import trio

from phdserver.operations import FilePresence
from tests.support import LineClient, make_config, running_server


class HungDisk:
    """``os.path.exists`` for the data directory that blocks until released."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.release = threading.Event()
        self.calls: list[Path] = []
        self._lock = threading.Lock()

    def __call__(self, path: str | os.PathLike[str]) -> bool:
        path = Path(path)
        if self.data_dir not in path.parents:
            return os.path.exists(path)
        with self._lock:
            self.calls.append(path)
        self.release.wait(30)
        return True


async def test_status_polls_answer_while_the_disk_hangs(tmp_path: Path) -> None:
    disk = HungDisk(tmp_path)
    async with running_server(make_config(tmp_path), files=FilePresence(exists=disk)) as (
            app, port):
        poller = await LineClient.connect(port)
        bystander = await LineClient.connect(port)
        try:
            with trio.fail_after(10):
                for _ in range(5):
                    darks = await poller.call("get_dark_library_status")
                    defects = await poller.call("get_defect_map_status")
                    assert await bystander.call("get_app_state") == "Stopped"
            # Not known yet (the check hangs): the last known value, never a stall.
            assert darks["file_exists"] is False
            assert defects["file_exists"] is False
            assert defects["master_exists"] is False
            watched = {app.calibration_paths.dark_library, app.calibration_paths.defect_map,
                       app.calibration_paths.defect_master}
            assert set(disk.calls) == watched
            assert len(disk.calls) == len(watched), "a second check queued behind a hung one"

            disk.release.set()
            assert await app.files.check(app.calibration_paths.dark_library) is True
            darks = await poller.call("get_dark_library_status")
            assert darks["file_exists"] is True
        finally:
            disk.release.set()
            await poller.aclose()
            await bystander.aclose()


async def test_a_completed_build_is_known_without_asking_the_disk(tmp_path: Path) -> None:
    presence = FilePresence(exists=lambda path: False)
    path = tmp_path / "lib.fit"
    presence.note(path, True)
    assert presence.poll(path) is True  # the background check has not answered yet
