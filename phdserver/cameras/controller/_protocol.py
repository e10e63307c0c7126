"""The camera-controller protocol without I/O: commands, reply framing, reply parsing, state bits.

Both ends use this module: the client (:mod:`.camera` through :mod:`._transport`) builds commands
and parses replies, the simulated controller (:mod:`.simulated`) parses commands and formats
replies, so the two cannot drift apart. Nothing here touches a socket, a serial port or the clock.

Replies look like ``[DONE {python-literal dict}]`` (reference/controller.md). A reply is classified
by its *form*, never by a substring search: every status dict carries an ``'ERROR': '0000'`` state
key, so looking for ``ERROR`` anywhere (as the LS4 Python client does) fails every status poll.
The dict is parsed with :func:`ast.literal_eval` only. :func:`parse_reply` never raises: garbage,
truncated brackets, oversized or hostile payloads all become a :class:`Reply` of kind
``MALFORMED`` or ``DROPPED`` with a reason a person can read.

Framers remember how far they have scanned, so feeding a reply one byte at a time costs O(n), and
both cap a reply at :data:`MAX_REPLY_BYTES` (8192, the LS4 buffer size).
"""

from __future__ import annotations

import ast
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "ALL_NEGATIVE",
    "ALL_POSITIVE",
    "CAMERA_TIMEOUT_S",
    "CLEAR_TIME_S",
    "COMMAND_DELAY_S",
    "COMMAND_PORT",
    "EXPOSE_MODES",
    "MAX_REPLY_BYTES",
    "READOUT_TIME_S",
    "STATE_NAMES",
    "STATUS_POLL_S",
    "STATUS_PORT",
    "TIMEOUT_MARGIN_S",
    "TRANSFER_TIME_S",
    "Command",
    "ControllerStatus",
    "LineFramer",
    "ParsedCommand",
    "Reply",
    "ReplyFramer",
    "ReplyKind",
    "bit_string",
    "clear_command",
    "done_reply",
    "error_reply",
    "expose_command",
    "expose_timeout_s",
    "format_header_value",
    "header_command",
    "parse_command",
    "parse_reply",
    "simple_command",
    "status_command",
]

COMMAND_PORT: Final = 5000
STATUS_PORT: Final = 5001
COMMAND_DELAY_S: Final = 0.1
"""``COMMAND_DELAY_USEC``: the pause after every command before the next one."""
CAMERA_TIMEOUT_S: Final = 5.0
"""``CAMERA_TIMEOUT_SEC``: reply timeout of the short commands (status, header, shutter...)."""
CLEAR_TIME_S: Final = 20
"""``CLEAR_TIME``: the argument of ``clear``; its reply timeout is this + 5 s."""
READOUT_TIME_S: Final = 40.0
TRANSFER_TIME_S: Final = 10.0
TIMEOUT_MARGIN_S: Final = 5.0
STATUS_POLL_S: Final = 0.1
MAX_REPLY_BYTES: Final = 8192
ALL_POSITIVE: Final = 15
"""A state key of ``'1111'``: the state holds for all four controllers."""
ALL_NEGATIVE: Final = 0
EXPOSE_MODES: Final = ("single", "first", "next", "last")
STATE_NAMES: Final = (
    "NOSTATUS", "UNKNOWN", "IDLE", "EXPOSING", "READOUT_PENDING", "READING", "FETCHING",
    "FLUSHING", "ERASING", "PURGING", "AUTOCLEAR", "AUTOFLUSH", "POWERON", "POWEROFF",
    "POWERBAD", "FETCH_PENDING", "ERROR", "ACTIVE", "ERRORED",
)  # fmt: skip
STATE_WIDTH: Final = 4
"""Characters of a state value: one bit per controller."""

_KEYWORD_RE: Final = re.compile(r"[A-Z0-9_-]{1,8}")
_FILEROOT_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MAX_HEADER_VALUE: Final = 68
_EXCERPT: Final = 80


# -- commands ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """One command line. ``verb`` names it in messages; ``text`` is what goes on the wire."""

    verb: str
    text: str

    def __post_init__(self) -> None:
        if not self.text or any(not " " <= c <= "~" for c in self.text):
            raise ValueError(f"a command must be printable ASCII, got {self.text!r}")

    def wire(self) -> bytes:
        """The bytes sent: the command and ``\\n`` (as the LS4 Python client sends it)."""
        return self.text.encode("ascii") + b"\n"


def status_command() -> Command:
    return Command(verb="status", text="status")


def simple_command(verb: str) -> Command:
    """``open_shutter``, ``close_shutter``, ``shutdown``, ``reboot``, ``restart``."""
    if verb not in ("open_shutter", "close_shutter", "shutdown", "reboot", "restart"):
        raise ValueError(f"unknown command {verb!r}")
    return Command(verb=verb, text=verb)


def format_header_value(value: str | int | float | bool) -> str:
    """A header value as the controller receives it: the rest of the command line."""
    if isinstance(value, bool):
        return "T" if value else "F"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def header_command(keyword: str, value: str | int | float | bool) -> Command:
    """``header KEY value``: one FITS keyword for the next exposure.

    Raises ``ValueError`` for a keyword that is not a FITS keyword (1-8 of ``A-Z0-9_-``) or a
    value with non-printable characters or longer than a FITS card can hold.
    """
    if not _KEYWORD_RE.fullmatch(keyword):
        raise ValueError(f"{keyword!r} is not a FITS keyword (1-8 characters A-Z 0-9 _ -)")
    text = format_header_value(value)
    if not text.strip() or len(text) > _MAX_HEADER_VALUE or any(not " " <= c <= "~" for c in text):
        raise ValueError(f"header value for {keyword} must be 1-68 printable ASCII characters")
    return Command(verb="header", text=f"header {keyword} {text}")


def expose_command(*, shutter_open: bool, exposure_s: float, fileroot: str,
                   mode: str = "single") -> Command:
    """``expose <True|False> <%9.3f seconds> <fileroot> <mode>``."""
    if mode not in EXPOSE_MODES:
        raise ValueError(f"mode must be one of {', '.join(EXPOSE_MODES)}, not {mode!r}")
    if not (exposure_s >= 0 and exposure_s < 1e6):
        raise ValueError(f"exposure must be 0..1e6 s, got {exposure_s}")
    if not _FILEROOT_RE.fullmatch(fileroot):
        raise ValueError(f"fileroot {fileroot!r} must be 1-64 characters A-Z a-z 0-9 _ . -")
    shutter = "True" if shutter_open else "False"
    return Command(verb="expose", text=f"expose {shutter} {exposure_s:9.3f} {fileroot} {mode}")


def clear_command(seconds: int = CLEAR_TIME_S) -> Command:
    if not 0 <= seconds <= 3600:
        raise ValueError(f"clear time must be 0..3600 s, got {seconds}")
    return Command(verb="clear", text=f"clear {seconds}")


def expose_timeout_s(mode: str, exposure_s: float, *, readout_s: float = READOUT_TIME_S,
                     transfer_s: float = TRANSFER_TIME_S) -> float:
    """How long to wait for the reply to ``expose``: the LS4 rule plus 5 s.

    ``single`` waits for exposure, readout and transfer; ``first`` for exposure and readout;
    ``next`` the larger of exposure + readout and the transfer (the C client uses the exposure
    alone, the Python one this larger value: we take the larger); ``last`` the transfer.
    """
    if mode == "single":
        base = exposure_s + readout_s + transfer_s
    elif mode == "first":
        base = exposure_s + readout_s
    elif mode == "next":
        base = max(exposure_s + readout_s, transfer_s)
    elif mode == "last":
        base = transfer_s
    else:
        raise ValueError(f"unknown expose mode {mode!r}")
    return base + TIMEOUT_MARGIN_S


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedCommand:
    """A command as the controller reads it: the verb and the words after it."""

    verb: str
    args: tuple[str, ...]
    rest: str
    """Everything after the verb, spaces kept (a header value may contain spaces)."""


def parse_command(line: bytes | str) -> ParsedCommand | None:
    """Split a received command line; None for a blank line."""
    text = line.decode("ascii", errors="replace") if isinstance(line, bytes) else line
    text = text.replace("\x00", "").strip()
    if not text:
        return None
    verb, _, rest = text.partition(" ")
    rest = rest.strip()
    return ParsedCommand(verb=verb, args=tuple(rest.split()), rest=rest)


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
