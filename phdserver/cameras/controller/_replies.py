"""Camera-controller replies without I/O: framing, parsing, the status dict and its state bits.

Replies look like ``[DONE {python-literal dict}]`` (reference/controller.md). A reply is classified
by its *form*, never by a substring search: every status dict carries an ``'ERROR': '0000'`` state
key, so looking for ``ERROR`` anywhere (as the LS4 Python client does) fails every status poll.
The dict is parsed with :func:`ast.literal_eval` only. :func:`parse_reply` never raises: garbage,
truncated brackets, oversized or hostile payloads all become a :class:`Reply` of kind
``MALFORMED`` or ``DROPPED`` with a reason a person can read.

Framers remember how far they have scanned, so feeding a reply one byte at a time costs O(n), and
both cap a reply at :data:`MAX_REPLY_BYTES` (8192, the LS4 buffer size). The commands are in
:mod:`._protocol`, which re-exports everything here.
"""

from __future__ import annotations

import ast
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "ALL_NEGATIVE",
    "ALL_POSITIVE",
    "MAX_REPLY_BYTES",
    "STATE_NAMES",
    "STATE_WIDTH",
    "ControllerStatus",
    "LineFramer",
    "Reply",
    "ReplyFramer",
    "ReplyKind",
    "bit_string",
    "done_reply",
    "error_reply",
    "excerpt",
    "parse_reply",
    "status_from_dict",
]

MAX_REPLY_BYTES: Final = 8192
ALL_POSITIVE: Final = 15
"""A state key of ``'1111'``: the state holds for all four controllers."""
ALL_NEGATIVE: Final = 0
STATE_NAMES: Final = (
    "NOSTATUS", "UNKNOWN", "IDLE", "EXPOSING", "READOUT_PENDING", "READING", "FETCHING",
    "FLUSHING", "ERASING", "PURGING", "AUTOCLEAR", "AUTOFLUSH", "POWERON", "POWEROFF",
    "POWERBAD", "FETCH_PENDING", "ERROR", "ACTIVE", "ERRORED",
)  # fmt: skip
STATE_WIDTH: Final = 4
"""Characters of a state value: one bit per controller."""
_EXCERPT: Final = 80


# -- status and replies --------------------------------------------------------------------------
class ReplyKind(enum.Enum):
    DONE = "done"
    ERROR = "error"
    """``[ERROR ...]`` or any bracketed reply whose first word is not DONE."""
    CMD_ERROR = "cmd_error"
    """``[DONE {...}]`` whose dict says ``'cmd_error': True``."""
    MALFORMED = "malformed"
    DROPPED = "dropped"
    """The connection ended before a complete reply (nothing, or a reply cut off)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ControllerStatus:
    """A parsed status dict. State values are bit masks, one bit per controller."""

    ready: bool = False
    error: bool = False
    state: str = ""
    comment: str = ""
    date: str = ""
    bits: Mapping[str, int] = field(default_factory=dict)
    cmd_error: bool = False
    cmd_error_msg: str = ""
    cmd_reply: str = ""
    width: int | None = None
    height: int | None = None
    """phdserver's extension: the sensor size, when the controller reports it."""
    fields: Mapping[str, object] = field(default_factory=dict)
    """The whole dict, for keys this record does not name."""

    def bit(self, name: str) -> int:
        """The mask of state ``name``; a state the controller does not report counts as 0."""
        return self.bits.get(name, ALL_NEGATIVE)

    @property
    def exposing(self) -> bool:
        return self.bit("EXPOSING") != ALL_NEGATIVE

    @property
    def reading_out(self) -> bool:
        return self.bit("READING") != ALL_NEGATIVE or self.bit("FETCHING") != ALL_NEGATIVE


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """A reply, classified. ``detail`` is the controller's reason (ERROR, CMD_ERROR) or ours
    (MALFORMED, DROPPED), or the payload text of a DONE reply without a dict."""

    kind: ReplyKind
    text: str
    detail: str = ""
    status: ControllerStatus | None = None

    @property
    def ok(self) -> bool:
        return self.kind is ReplyKind.DONE


class _Malformed(Exception):
    pass


def excerpt(text: str, limit: int = _EXCERPT) -> str:
    """``text`` shortened for a message, control characters escaped."""
    shown = text if len(text) <= limit else text[: limit - 3] + "..."
    return repr(shown)


def _flag(data: Mapping[str, object], key: str) -> bool:
    value = data.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", ""):
        return value.strip().lower() in ("true", "1")
    raise _Malformed(f"{key!r} is {excerpt(repr(value), 40)}, not a boolean")


def _mask(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise _Malformed(f"state {name} is a boolean, not a bit string")
    if isinstance(value, int) and 0 <= value < 1 << 16:
        return value
    if isinstance(value, str) and 0 < len(value.strip()) <= 16 and set(value.strip()) <= {"0", "1"}:
        return int(value.strip(), 2)
    raise _Malformed(f"state {name} is {excerpt(repr(value), 40)}, not a bit string like '1111'")


def _size(data: Mapping[str, object], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 65536:
        return value
    raise _Malformed(f"{key!r} is {excerpt(repr(value), 40)}, not a sensor size")


def _text(data: Mapping[str, object], key: str) -> str:
    value = data.get(key, "")
    return value if isinstance(value, str) else repr(value)


def status_from_dict(data: Mapping[str, object]) -> ControllerStatus:
    """Validate a status dict; raises ``_Malformed`` with the reason."""
    if not all(isinstance(k, str) for k in data):
        raise _Malformed("the dict has keys that are not strings")
    bits = {name: _mask(name, data[name]) for name in STATE_NAMES if name in data}
    return ControllerStatus(
        ready=_flag(data, "ready"),
        error=_flag(data, "error"),
        state=_text(data, "state"),
        comment=_text(data, "comment"),
        date=_text(data, "date"),
        bits=bits,
        cmd_error=_flag(data, "cmd_error"),
        cmd_error_msg=_text(data, "cmd_error_msg"),
        cmd_reply=_text(data, "cmd_reply"),
        width=_size(data, "width"),
        height=_size(data, "height"),
        fields=dict(data),
    )


def _literal_dict(payload: str) -> dict[object, object]:
    try:
        value = ast.literal_eval(payload)
    except Exception as exc:  # SyntaxError, ValueError, RecursionError, MemoryError...
        reason = type(exc).__name__
        raise _Malformed(f"the payload is not a Python literal ({reason})") from None
    if not isinstance(value, dict):
        raise _Malformed(f"the payload is a {type(value).__name__}, not a dict")
    return value


def parse_reply(data: bytes | bytearray, *, eof: bool = False) -> Reply:
    """Classify one reply. ``eof``: the connection ended it (a cut-off reply is DROPPED).

    Never raises. Bytes after a NUL are ignored (the C client stops there).
    """
    raw = bytes(data[:MAX_REPLY_BYTES + 1]).split(b"\x00", 1)[0]
    text = raw.decode("utf-8", errors="replace").strip()
    if len(data) > MAX_REPLY_BYTES:
        return Reply(kind=ReplyKind.MALFORMED, text=text[:_EXCERPT],
                     detail=f"the reply is longer than {MAX_REPLY_BYTES} bytes")
    if not text:
        detail = "the connection closed without a reply" if eof else "empty reply"
        return Reply(kind=ReplyKind.DROPPED if eof else ReplyKind.MALFORMED, text="",
                     detail=detail)
    if not text.startswith("["):
        return Reply(kind=ReplyKind.MALFORMED, text=text,
                     detail=f"not a bracketed [DONE ...] reply: {excerpt(text)}")
    if not text.endswith("]"):
        if eof:
            return Reply(kind=ReplyKind.DROPPED, text=text,
                         detail=f"the reply was cut off after {len(raw)} bytes: {excerpt(text)}")
        return Reply(kind=ReplyKind.MALFORMED, text=text,
                     detail=f"the reply has no closing bracket: {excerpt(text)}")
    inner = text[1:-1].strip()
    word, _, payload = inner.partition(" ")
    payload = payload.strip()
    try:
        status = status_from_dict(_literal_dict(payload)) if payload.startswith("{") else None
    except _Malformed as exc:
        if word == "ERROR":  # an error reply stays an error whatever its payload looks like
            return Reply(kind=ReplyKind.ERROR, text=text, detail=payload or "no reason given")
        return Reply(kind=ReplyKind.MALFORMED, text=text, detail=f"malformed status dict: {exc}")
    if word == "DONE":
        if status is not None and status.cmd_error:
            reason = status.cmd_error_msg or status.comment or "no reason given"
            return Reply(kind=ReplyKind.CMD_ERROR, text=text, detail=reason, status=status)
        return Reply(kind=ReplyKind.DONE, text=text, detail="" if status else payload,
                     status=status)
    if word == "ERROR":
        reason = payload
        if status is not None:
            reason = status.cmd_error_msg or status.comment or payload
        return Reply(kind=ReplyKind.ERROR, text=text, detail=reason or "no reason given",
                     status=status)
    return Reply(kind=ReplyKind.ERROR, text=text,
                 detail=f"the controller answered {excerpt(word, 20)} instead of DONE")


class ReplyFramer:
    """Finds the end of a reply on a one-command TCP connection.

    A reply ends at a NUL byte, at end of file (:meth:`eof`), or when the bytes so far form a
    balanced bracketed reply: ``]`` closes the ``[`` that opened it, brackets inside quoted
    strings not counting. (The LS4 client stops at any chunk that ends with ``]``, which cuts a
    dict holding a list in two when the chunk boundary falls after the list.)
    """

    def __init__(self, max_bytes: int = MAX_REPLY_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_bytes
        self._scanned = 0
        self._depth = 0
        self._quote = 0
        self._escape = False

    def __len__(self) -> int:
        return len(self._buf)

    def feed(self, chunk: bytes) -> Reply | None:
        """Add received bytes; the reply once it is complete (or too long), else None."""
        self._buf += chunk
        buf = self._buf
        nul = buf.find(b"\x00", self._scanned)
        end = nul if nul >= 0 else len(buf)
        for i in range(self._scanned, min(end, self._max)):
            c = buf[i]
            if self._quote:
                if self._escape:
                    self._escape = False
                elif c == 0x5C:  # backslash
                    self._escape = True
                elif c == self._quote:
                    self._quote = 0
            elif c in (0x27, 0x22):  # ' "
                self._quote = c
            elif c == 0x5B:  # [
                self._depth += 1
            elif c == 0x5D:  # ]
                self._depth -= 1
                if self._depth == 0 and not buf[i + 1 : end].strip():
                    return parse_reply(buf[: i + 1])
        self._scanned = min(end, self._max)
        if nul >= 0:
            return parse_reply(buf[:nul])
        if len(buf) > self._max:
            return parse_reply(buf)
        return None

    def eof(self) -> Reply:
        """The connection closed: whatever arrived is the reply."""
        return parse_reply(self._buf, eof=True)


class LineFramer:
    """Splits a serial line into reply lines (``\\n``-terminated, ``\\r`` and blank lines
    ignored). A line longer than :data:`MAX_REPLY_BYTES` is one MALFORMED reply."""

    def __init__(self, max_bytes: int = MAX_REPLY_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_bytes
        self._scanned = 0
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes of an incomplete line held."""
        return len(self._buf)

    def reset(self) -> None:
        self._buf.clear()
        self._scanned = 0
        self._discarding = False

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_reply(self) -> Reply | None:
        """The next complete reply line, parsed; None until one is complete."""
        while True:
            index = self._buf.find(b"\n", self._scanned)
            if index < 0:
                self._scanned = len(self._buf)
                if len(self._buf) > self._max and not self._discarding:
                    self._buf.clear()
                    self._scanned = 0
                    self._discarding = True
                    return Reply(kind=ReplyKind.MALFORMED, text="",
                                 detail=f"the reply is longer than {MAX_REPLY_BYTES} bytes")
                if self._discarding:
                    self._buf.clear()
                    self._scanned = 0
                return None
            line = bytes(self._buf[:index])
            del self._buf[: index + 1]
            self._scanned = 0
            if self._discarding:  # the tail of an oversized line, already reported
                self._discarding = False
                continue
            if not line.strip(b"\r\x00 \t"):
                continue
            if len(line) > self._max:
                return Reply(kind=ReplyKind.MALFORMED, text="",
                             detail=f"the reply is longer than {MAX_REPLY_BYTES} bytes")
            return parse_reply(line)


# -- the controller's side -----------------------------------------------------------------------
def bit_string(mask: int) -> str:
    """A state value as the controller sends it: ``15`` -> ``'1111'``."""
    return format(mask & ALL_POSITIVE, f"0{STATE_WIDTH}b")


def done_reply(fields: Mapping[str, object]) -> bytes:
    """``[DONE {...}]``: ``fields`` written as a Python literal dict (``repr``)."""
    return b"[DONE " + repr(dict(fields)).encode("ascii", errors="replace") + b"]"


def error_reply(message: str) -> bytes:
    clean = "".join(c if " " <= c <= "~" and c not in "[]" else "?" for c in message)
    return f"[ERROR {clean}]".encode("ascii")
