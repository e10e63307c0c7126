"""The camera-controller protocol without I/O: commands here, replies in :mod:`._replies`.

Both ends use this module: the client (:mod:`.camera` through :mod:`._transport`) builds commands
and parses replies, the simulated controller (:mod:`.simulated`) parses commands and formats
replies, so the two cannot drift apart. Nothing here touches a socket, a serial port or the clock.

Replies (framing, parsing, the status dict and its state bits) are in :mod:`._replies`; this
module re-exports them, so importers see one protocol.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from ._replies import (
    ALL_NEGATIVE,
    ALL_POSITIVE,
    MAX_REPLY_BYTES,
    STATE_NAMES,
    ControllerStatus,
    LineFramer,
    Reply,
    ReplyFramer,
    ReplyKind,
    bit_string,
    done_reply,
    error_reply,
    parse_reply,
)

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
EXPOSE_MODES: Final = ("single", "first", "next", "last")

_KEYWORD_RE: Final = re.compile(r"[A-Z0-9_-]{1,8}")
_FILEROOT_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MAX_HEADER_VALUE: Final = 68


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
