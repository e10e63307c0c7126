"""One holder of the camera at a time: looping, a single frame, or a build.

The lock never waits: a second request is refused at once with code 1 and a message naming the
holder ("the camera is busy: dark library build (operation 12) is using it"), which is what an
observatory script needs to decide what to do. Holding is a context manager, so the camera is
released however the holder ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from phdserver.errors import Refused

__all__ = ["CameraHolder", "CameraLock"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CameraHolder:
    description: str
    operation_id: int | None = None

    def __str__(self) -> str:
        if self.operation_id is None:
            return self.description
        return f"{self.description} (operation {self.operation_id})"


class CameraLock:
    def __init__(self) -> None:
        self._holder: CameraHolder | None = None

    @property
    def holder(self) -> CameraHolder | None:
        return self._holder

    def acquire(self, holder: CameraHolder) -> None:
        if self._holder is not None:
            raise Refused(f"the camera is busy: {self._holder} is using it")
        self._holder = holder

    def release(self, holder: CameraHolder) -> None:
        if self._holder is holder:
            self._holder = None

    @contextmanager
    def holding(self, holder: CameraHolder) -> Iterator[CameraHolder]:
        """Hold the camera for the duration of a ``with`` block (acquire first)."""
        try:
            yield holder
        finally:
            self.release(holder)
