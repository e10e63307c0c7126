"""Whether the server's own files exist, answered without touching the disk in the event loop.

A status poll (``get_dark_library_status``, ``get_defect_map_status``) reports whether the
profile's files exist. A ``stat`` in the event loop on a data directory on a network share that
stopped answering would hang the whole daemon: every client, guiding included. So a poll reads
what is known (from our own writes, and from the last check), and checks the disk again in a
worker thread, at most one check per file at a time: a hung share holds one thread per file,
never the loop, and polls never queue behind it. Methods that must know now (loading a file)
use :meth:`FilePresence.check`, which waits for a thread, not the loop.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import structlog
import trio

__all__ = ["FilePresence"]


class FilePresence:
    """Last known existence of files, kept fresh by background checks in threads."""

    def __init__(self, exists: Callable[[str | os.PathLike[str]], bool] = os.path.exists,
                 logger: object = None) -> None:
        self._exists = exists
        self._known: dict[Path, bool] = {}
        self._checking: dict[Path, trio.Event] = {}
        self._waited: set[Path] = set()
        self._log = logger if logger is not None else structlog.get_logger("phdserver")

    def note(self, path: Path, exists: bool) -> None:
        """Record what we know from our own write or removal of ``path``."""
        self._known[path] = exists

    def poll(self, path: Path) -> bool:
        """What is known about ``path`` now (False if nothing yet), and start a fresh check
        in a thread unless one is under way. Never waits."""
        self._start_refresh(path)
        return self._known.get(path, False)

    async def poll_first(self, path: Path, wait_s: float = 0.25) -> bool:
        """As :meth:`poll`, but the first time a file is asked about, wait up to ``wait_s``
        for the check (a healthy disk answers in microseconds, so a client's first poll after
        start is right); a disk that does not answer gets the known value, False."""
        done = self._start_refresh(path)
        if path not in self._known and path not in self._waited:
            self._waited.add(path)  # only once: a hung disk must not slow every poll
            with trio.move_on_after(wait_s):
                await done.wait()
        return self._known.get(path, False)

    def _start_refresh(self, path: Path) -> trio.Event:
        done = self._checking.get(path)
        if done is None:
            done = self._checking[path] = trio.Event()
            trio.lowlevel.spawn_system_task(self._refresh, path, done, name=f"stat {path.name}")
        return done

    async def check(self, path: Path) -> bool:
        """Check the disk now, in a thread; a cancelled caller abandons a hung check."""
        exists = await trio.to_thread.run_sync(self._exists, path, abandon_on_cancel=True)
        self._known[path] = exists
        return exists

    async def _refresh(self, path: Path, done: trio.Event) -> None:
        try:
            await self.check(path)
        except Exception as exc:  # a system task must never raise
            self._log.warning("could not check a file", path=str(path), error=str(exc))
        finally:
            del self._checking[path]
            done.set()
