"""SIGKILL during a save (SPEC §8, reliability): the daemon is a real process, killed the
moment its dark-library build says it is saving, and started again on the same data directory.

The daemon is killed once the save has created its temporary file (seen through inotify).
The library must then be the previous file byte for byte, with the temporary file left behind,
or, if the save got through before the kill landed, the complete new one; never a mix or a
half-written file. The temporary file
an interrupted save leaves behind is swept at the next start, and the library loads.
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

import trio
from astropy.io import fits

from phdserver.library import read_dark_library
from tests.support import LineClient, file_bytes, hidden_files, serve_process, wait_operation

OLD_EXPOSURES = [1000]
NEW_EXPOSURES = [1000, 2000, 3000, 4000, 5000]


class CreationWatch:
    """Linux inotify on one directory: wait for a file to be created there (an event, no
    polling). Used to kill the daemon once its save has created the temporary file."""

    IN_CREATE = 0x100
    _HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, bytes(directory), self.IN_CREATE) < 0:
            raise OSError(ctypes.get_errno(), "inotify")

    async def created(self, prefix: str) -> str:
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            data = os.read(self.fd, 65536)
            offset = 0
            while offset < len(data):
                _, mask, _, size = self._HEADER.unpack_from(data, offset)
                offset += self._HEADER.size
                name = data[offset:offset + size].rstrip(b"\0").decode()
                offset += size
                if mask & self.IN_CREATE and name.startswith(prefix):
                    return name

    def close(self) -> None:
        os.close(self.fd)


async def test_sigkill_while_saving_leaves_the_old_library_or_the_new_one(
    tmp_path: Path,
) -> None:
    serve = ("--data-dir", str(tmp_path), "--sim-size", "4096x4096",
             "--sim-time-scale", "0.005")
    async with serve_process(*serve) as (process, port):
        client = await LineClient.connect(port)
        await client.call("set_connected", [True])
        started = await client.call("start_dark_library_build",
                                    {"exposures": OLD_EXPOSURES, "frame_count": 1})
        assert (await wait_operation(client, started["operation_id"], timeout=120))[
            "Status"] == "completed"
        path = Path((await client.call("get_dark_library_status"))["path"])
        old = file_bytes(path)

        # 5 × 32 MiB and an fsync to save: killed once the temporary file exists, the save
        # is (almost always) still writing it.
        watch = CreationWatch(path.parent)
        try:
            await client.call("start_dark_library_build",
                              {"exposures": NEW_EXPOSURES, "frame_count": 1})
            with trio.fail_after(120):
                temporary = await watch.created(f".{path.name}.tmp-")
            process.kill()
            await process.wait()
        finally:
            watch.close()
        await client.aclose()

    after = file_bytes(path)
    interrupted = hidden_files(path.parent)
    if after == old:  # killed before the rename: the temporary file is still there
        assert temporary in interrupted
    else:  # the save got through first: the new library is whole, nothing is left over
        assert interrupted == []
        assert read_dark_library(path).exposures == tuple(NEW_EXPOSURES)
        with fits.open(path) as hdus:
            assert len(hdus) == len(NEW_EXPOSURES)
            for hdu in hdus:
                assert hdu.data.shape == (4096, 4096)

    async with serve_process(*serve) as (process, port):
        assert hidden_files(path.parent) == []  # swept at start-up
        assert file_bytes(path) == after
        client = await LineClient.connect(port)
        await client.call("set_connected", [True])
        loaded = await client.call("load_dark_library")
        assert loaded["exposures"] == (OLD_EXPOSURES if after == old else NEW_EXPOSURES)
        masters = await client.call("list_calibration_masters")
        assert {m["path"] for m in masters} == {str(path)}  # the index survived too
        await client.aclose()
