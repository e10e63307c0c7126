"""Turn request lines into typed messages and replies into bytes (sans-I/O).

The rules are PHD2's (reference/phd2.md §1 and §6), which clients were written against:

* the ``jsonrpc`` member of a request is ignored;
* a request with an ``id`` member (even ``null``) is answered, one without is a notification;
* a missing or non-string ``method`` gets -32600 with ``"id":null``, even for a notification;
* ``params`` must be an array or an object, else -32600 with ``"id":null``;
* a batch is answered as one array of the replies that have ids; an empty batch, or a batch of
  notifications only, gets no reply at all;
* ids are echoed exactly as they came: a number as the text the client wrote (``1e400``,
  ``123456789.123456789`` and ``-0`` come back unchanged, where a double would change them),
  strings, objects and ``null`` as the same JSON value;
* a batch of more than :data:`MAX_BATCH` requests is answered whole with one error per request
  that has an id, each with its id (never by closing the connection).

Garbage in produces an :class:`InvalidMessage` (which becomes an error reply), never an exception,
and :func:`dumps` writes every value a handler can return, lone surrogates included.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Final

import orjson

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_REQUEST",
    "MAX_BATCH",
    "MAX_ID_DEPTH",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "Batch",
    "InvalidMessage",
    "RefusedRequest",
    "Request",
    "decode_line",
    "dumps",
    "encode_batch",
    "encode_error",
    "encode_result",
    "write_json",
]

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INTERNAL_ERROR: Final = -32603

MAX_BATCH: Final = 1000
"""The most requests one batch line may hold (a 64 KiB line holds about 2,500 minimal ones)."""

_CRLF: Final = b"\r\n"
_SNIPPET: Final = 12
_NULL: Final = b"null"
MAX_ID_DEPTH: Final = 200
"""The deepest array or object id that is echoed (deeper ones are refused as invalid)."""


@dataclass(frozen=True, slots=True)
class Request:
    """A call. ``params`` is the raw JSON array or object (validated later, by the handler);
    ``id`` is the request's id as JSON text, ready to be echoed (``b"null"`` when it has none)."""

    method: str
    params: list[Any] | dict[str, Any] | None
    id: bytes
    has_id: bool


@dataclass(frozen=True, slots=True)
class InvalidMessage:
    """A line or batch element that is not a usable request; answered with ``"id":null``."""

    code: int
    message: str


@dataclass(frozen=True, slots=True)
class RefusedRequest:
    """A request in a batch too large to run: answered with an error carrying its id."""

    code: int
    message: str
    id: bytes


@dataclass(frozen=True, slots=True)
class Batch:
    items: tuple[Request | InvalidMessage | RefusedRequest, ...]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid constant {name}")


_LONG_DIGITS: Final = re.compile(rb"\d{19}")


def _loads(line: bytes) -> Any:
    """Parse with orjson, except where it would change a value: orjson turns integers beyond
    64 bits into floats, so a line with 19 or more consecutive digits (an id echoed back must
    be exact) goes to the standard library. Errors get PHD2's style of message."""
    if _LONG_DIGITS.search(line) is None:
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:
            pass
    try:
        # Decoded here, as UTF-8: given bytes, the standard library would guess UTF-16 or -32
        # from NUL bytes, and a line is UTF-8 (PHD2's rule) or it is garbage.
        return json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        snippet = exc.doc[exc.pos : exc.pos + _SNIPPET]
        raise _ParseError(f"{exc.msg} on line {exc.lineno} at \"{snippet}...\"") from None
    except RecursionError:
        raise _ParseError("nesting too deep on line 1") from None
    except UnicodeDecodeError as exc:
        raise _ParseError(f"invalid UTF-8 at byte {exc.start} on line 1") from None
    except ValueError as exc:  # NaN/Infinity
        raise _ParseError(f"{exc} on line 1") from None


class _ParseError(Exception):
    pass


def decode_line(line: bytes) -> Request | InvalidMessage | Batch:
    """Decode one request line (its terminator already removed)."""
    if not line.strip():
        return InvalidMessage(PARSE_ERROR, 'invalid JSON request: empty string on line 1 at "..."')
    try:
        document = _loads(line)
    except _ParseError as exc:
        return InvalidMessage(PARSE_ERROR, f"invalid JSON request: {exc}")
    exact = _ExactIds(line)
    if isinstance(document, list):
        items = tuple(_decode_request(item, exact, index) for index, item in enumerate(document))
        if len(items) > MAX_BATCH:
            return Batch(tuple(_refuse(item, len(items)) for item in items))
        return Batch(items)
    return _decode_request(document, exact, None)


def _refuse(item: Request | InvalidMessage, size: int) -> Request | InvalidMessage | RefusedRequest:
    if type(item) is not Request or not item.has_id:
        return item  # an invalid element keeps its own error; a notification stays unanswered
    return RefusedRequest(
        INVALID_REQUEST,
        f"invalid request - batch of {size} requests, at most {MAX_BATCH} are run in one line",
        item.id,
    )


def _decode_request(document: Any, exact: _ExactIds, index: int | None) -> Request | InvalidMessage:
    if not isinstance(document, dict):
        return InvalidMessage(INVALID_REQUEST, "invalid request - request must be a JSON object")
    method = document.get("method")
    if not isinstance(method, str):
        return InvalidMessage(INVALID_REQUEST, "invalid request - missing method")
    params = document.get("params")
    if params is not None and not isinstance(params, list | dict):
        return InvalidMessage(
            INVALID_REQUEST, "invalid request - params must be an array or object"
        )
    if "id" not in document:
        return Request(method, params, _NULL, False)
    request_id = exact.echo(document["id"], index)
    if request_id is None:
        return InvalidMessage(
            INVALID_REQUEST, f"invalid request - id nested deeper than {MAX_ID_DEPTH} levels"
        )
    return Request(method, params, request_id, True)


class _RawNumber:
    """A JSON number kept as the text the client wrote."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class _ExactIds:
    """Echo text for the ids of one line.

    A string, ``null``, a boolean or a non-zero integer is written back from its value (the
    text can only differ in string escapes, which JSON treats as the same string). Any other
    id (a float, ``0``, which may have been ``-0``, an array or an object) is taken from a
    second parse of the line that keeps every number's text; that parse runs only for such
    lines, so the common integer and string ids cost nothing extra.
    """

    __slots__ = ("_line", "_raw")

    def __init__(self, line: bytes) -> None:
        self._line = line
        self._raw: Any = None

    def echo(self, value: Any, index: int | None) -> bytes | None:
        """The id's text, or None for an id nested deeper than :data:`MAX_ID_DEPTH`."""
        kind = type(value)
        if kind is str:
            return write_json(value, exact=True).encode() if _SURROGATE.search(value) else dumps(
                value)
        if value is None or kind is bool or (kind is int and value != 0):
            return dumps(value)
        if _depth(value) > MAX_ID_DEPTH:
            return None
        try:
            if self._raw is None:
                self._raw = json.loads(self._line.decode("utf-8"), parse_float=_RawNumber,
                                       parse_int=_RawNumber)
            document = self._raw if index is None else self._raw[index]
            return write_json(document["id"], exact=True).encode()
        except (RecursionError, ValueError, TypeError, KeyError, IndexError):
            return dumps(value)  # unreachable for a line that parsed; never fail a reply


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in ``value`` (iterative: any depth is measured)."""
    deepest = 0
    pending = [(value, 0)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level + 1)
            pending.extend((member, level + 1) for member in item)
    return deepest


_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def write_json(value: Any, *, exact: bool = False) -> str:
    """A small, total JSON writer for what orjson refuses: integers beyond 64 bits, strings
    with lone surrogates, numbers kept as text, nesting up to the interpreter's recursion limit.

    A lone surrogate (a string escape such as ``\\ud800`` with no partner, which no UTF-8
    text can hold) becomes U+FFFD, so that every client's parser reads the line; with
    ``exact`` (an id, echoed as the client wrote it) it is written back as its escape.
    Non-finite floats become ``null``, as orjson writes them.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return json.dumps(value if exact else _SURROGATE.sub("\ufffd", value))
    if isinstance(value, _RawNumber):
        return value.text
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return float.__repr__(value) if math.isfinite(value) else "null"
    if isinstance(value, dict):
        members = []
        for key, member in value.items():
            if not isinstance(key, str):
                raise TypeError(f"object key {key!r} is not a string")
            members.append(write_json(key, exact=exact) + ":" + write_json(member, exact=exact))
        return "{" + ",".join(members) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(write_json(item, exact=exact) for item in value) + "]"
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any) -> bytes:
    """Serialise a JSON value: orjson, and :func:`write_json` for what orjson refuses (integers
    beyond 64 bits, lone surrogates, nesting past its limit). Raises TypeError only for a value
    that is not JSON at all (a handler bug)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        pass
    try:
        return write_json(value).encode()
    except RecursionError:
        raise TypeError("value nested too deep to serialise") from None


def encode_result(result: Any, request_id: bytes) -> bytes:
    """A result reply; ``request_id`` is the id's JSON text (:attr:`Request.id`)."""
    return b'{"jsonrpc":"2.0","result":' + dumps(result) + b',"id":' + request_id + b"}"


def encode_error(code: int, message: str, request_id: bytes = _NULL) -> bytes:
    """An error reply; never raises (a message with lone surrogates is escaped)."""
    error = dumps({"code": code, "message": message})
    return b'{"jsonrpc":"2.0","error":' + error + b',"id":' + request_id + b"}"


def encode_batch(replies: list[bytes]) -> bytes:
    """Join already-encoded replies into one JSON array (the caller adds the line end)."""
    return b"[" + b",".join(replies) + b"]"


def line(payload: bytes) -> bytes:
    """Terminate one outgoing message: every line out ends in CRLF."""
    return payload + _CRLF
