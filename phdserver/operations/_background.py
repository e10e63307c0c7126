"""A nursery that a long-lived service owns, for the tasks it starts on behalf of callers.

Looping, camera background tasks and operations all outlive the request that started them, so
each of those services owns one nursery (the visible exception to "the caller opens the
nursery"), opened by the service's ``run``, which the app starts in its own nursery.
"""

from __future__ import annotations

import trio

__all__ = ["BackgroundTasks"]


class BackgroundTasks:
    def __init__(self) -> None:
        self._nursery: trio.Nursery | None = None

    @property
    def nursery(self) -> trio.Nursery | None:
        """The open nursery, or None before ``run`` started or after it ended."""
        return self._nursery

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the nursery open until cancelled (which cancels every task in it)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None
