"""Split a byte stream into request lines under a hard length limit (sans-I/O).

Bytes go in with :meth:`LineSplitter.feed`; complete lines come out. A line ends at ``\\n``; a
trailing ``\\r`` is stripped, so CRLF and bare LF both work (PHD2 splits on ``\\n`` only and lets
its JSON parser skip the ``\\r``).

Like h11's receive buffer, the splitter remembers how far it has already searched, so a hostile
peer that dribbles a long line byte by byte costs O(n), not O(n²).

A line longer than ``max_line`` is never buffered whole. The splitter emits one
:data:`OVERSIZE` marker for it, then discards the rest of that line up to its newline, and the
next line is parsed normally. (PHD2 instead discards only what has arrived so far and parses
the tail of the long line as a fresh, broken request; we keep the connection's state clean.)
"""

from __future__ import annotations

from typing import Final, final

__all__ = ["DEFAULT_MAX_LINE", "OVERSIZE", "LineSplitter"]

DEFAULT_MAX_LINE: Final = 64 * 1024


@final
class _Oversize:
    """Marker for a line that exceeded the limit (it has no content)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "OVERSIZE"


OVERSIZE: Final = _Oversize()


class LineSplitter:
    """Accumulates bytes and yields complete lines (without their terminator)."""

    __slots__ = ("_buffer", "_discarding", "_max_line", "_searched")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 16:
            raise ValueError("max_line must be at least 16 bytes")
        self._max_line = max_line
        self._buffer = bytearray()
        self._searched = 0
        self._discarding = False

    @property
    def buffered(self) -> int:
        """Bytes held waiting for a newline (never more than ``max_line``)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | _Oversize]:
        """Add ``data`` and return every line it completes, in order."""
        out: list[bytes | _Oversize] = []
        if self._discarding:
            newline = data.find(b"\n")
            if newline < 0:
                return out
            self._discarding = False
            data = data[newline + 1 :]
        buffer = self._buffer
        if not buffer and data.endswith(b"\n") and len(data) <= self._max_line:
            # Fast path: the common case of whole lines arriving in one chunk.
            lines = data.split(b"\n")
            lines.pop()
            for line in lines:
                out.append(line[:-1] if line.endswith(b"\r") else line)
            return out
        buffer += data
        start = 0
        search_from = self._searched
        while True:
            newline = buffer.find(b"\n", search_from)
            if newline < 0:
                break
            if newline - start > self._max_line:
                out.append(OVERSIZE)
            else:
                end = newline - 1 if newline > start and buffer[newline - 1] == 0x0D else newline
                out.append(bytes(buffer[start:end]))
            start = newline + 1
            search_from = start
        del buffer[:start]
        if len(buffer) > self._max_line:
            out.append(OVERSIZE)
            buffer.clear()
            self._discarding = True
        self._searched = len(buffer)
        return out
