"""Disk-backed frame buffers for combine modes that need every frame at once (median, clip).

A median of 50 full-size frames does not fit comfortably in a small observatory computer's
memory, so frames are spooled to a memory-mapped temporary file in the data directory and
combined in row tiles. The file is removed however the build ends.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["frame_spool"]


@contextmanager
def frame_spool(directory: Path, count: int, height: int, width: int) -> Iterator[np.ndarray]:
    """A ``(count, height, width)`` uint16 memmap in ``directory``, deleted on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".spool-", suffix=".u16", dir=directory)
    os.close(fd)
    path = Path(name)
    try:
        # Unlinking while mapped is fine on POSIX: the space is freed when the last view goes.
        yield np.memmap(path, dtype=np.uint16, mode="w+", shape=(count, height, width))
    finally:
        path.unlink(missing_ok=True)
