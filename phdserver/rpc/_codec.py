"""Turn request lines into typed messages and replies into bytes (sans-I/O).

The rules are PHD2's (reference/phd2.md §1 and §6), which clients were written against:

* the ``jsonrpc`` member of a request is ignored;
* a request with an ``id`` member (even ``null``) is answered, one without is a notification;
* a missing or non-string ``method`` gets -32600 with ``"id":null``, even for a notification;
* ``params`` must be an array or an object, else -32600 with ``"id":null``;
* a batch is answered as one array of the replies that have ids; an empty batch, or a batch of
  notifications only, gets no reply at all;
* ids are echoed exactly as they came (numbers, strings, objects, null).

Garbage in produces an :class:`InvalidMessage` (which becomes an error reply), never an exception.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

import orjson

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "Batch",
    "InvalidMessage",
    "Request",
    "decode_line",
    "dumps",
    "encode_batch",
    "encode_error",
    "encode_result",
]

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INTERNAL_ERROR: Final = -32603

_CRLF: Final = b"\r\n"
_SNIPPET: Final = 12


@dataclass(frozen=True, slots=True)
class Request:
    """A call. ``params`` is the raw JSON array or object (validated later, by the handler)."""

    method: str
    params: list[Any] | dict[str, Any] | None
    id: Any
    has_id: bool


@dataclass(frozen=True, slots=True)
class InvalidMessage:
    """A line or batch element that is not a usable request; answered with ``"id":null``."""

    code: int
    message: str


@dataclass(frozen=True, slots=True)
class Batch:
    items: tuple[Request | InvalidMessage, ...]


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
        return json.loads(line, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        snippet = exc.doc[exc.pos : exc.pos + _SNIPPET]
        raise _ParseError(f"{exc.msg} on line {exc.lineno} at \"{snippet}...\"") from None
    except RecursionError:
        raise _ParseError("nesting too deep on line 1") from None
    except ValueError as exc:  # bad UTF-8, NaN/Infinity
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
    if isinstance(document, list):
        return Batch(tuple(_decode_request(item) for item in document))
    return _decode_request(document)


def _decode_request(document: Any) -> Request | InvalidMessage:
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
    has_id = "id" in document
    return Request(method, params, document.get("id") if has_id else None, has_id)


def dumps(value: Any) -> bytes:
    """Serialise a JSON value; integers beyond 64 bits go through the standard library."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def encode_result(result: Any, request_id: Any) -> bytes:
    return b'{"jsonrpc":"2.0","result":' + dumps(result) + b',"id":' + dumps(request_id) + b"}"


def encode_error(code: int, message: str, request_id: Any = None) -> bytes:
    error = dumps({"code": code, "message": message})
    return b'{"jsonrpc":"2.0","error":' + error + b',"id":' + dumps(request_id) + b"}"


def encode_batch(replies: list[bytes]) -> bytes:
    """Join already-encoded replies into one JSON array (the caller adds the line end)."""
    return b"[" + b",".join(replies) + b"]"


def line(payload: bytes) -> bytes:
    """Terminate one outgoing message: every line out ends in CRLF."""
    return payload + _CRLF
