"""Route requests to handlers and turn their outcome into encoded replies.

This is the only place that builds JSON-RPC error objects. A handler returns a JSON-serialisable
result (``0`` for "done, no data", as PHD2 does) or an awaitable of one, or raises a
:class:`~phdserver.errors.PhdError`, whose code and message become the error object. Any other
exception is a bug in the handler: it is logged with its traceback and the client gets -32603;
the connection and the server carry on. ``trio.Cancelled`` is a ``BaseException`` and passes
through untouched.

Synchronous handlers complete without a checkpoint, which keeps pipelined status polls cheap;
only handlers that really wait (connecting a camera, say) return an awaitable.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from phdserver.errors import PhdError

from ._codec import (
    INTERNAL_ERROR,
    METHOD_NOT_FOUND,
    Batch,
    InvalidMessage,
    RefusedRequest,
    Request,
    encode_batch,
    encode_error,
    encode_result,
)

__all__ = ["Dispatcher", "Handler", "Reply"]

Handler = Callable[[list[Any] | dict[str, Any] | None], Any]
"""A method: raw params in, a result or an awaitable of one out."""

Reply = bytes | None
"""An encoded reply without its line end, or None when nothing is to be sent."""


class Dispatcher:
    """Maps method names to handlers; stateless apart from the table and a logger."""

    def __init__(self, methods: Mapping[str, Handler], logger: Any = None) -> None:
        self._methods = dict(methods)
        self._log = logger if logger is not None else structlog.get_logger("phdserver.rpc")
        is_enabled_for = getattr(self._log, "is_enabled_for", None)
        self._log_requests = is_enabled_for is None or bool(is_enabled_for(logging.DEBUG))
        """Whether each request is timed and logged (only at debug level: at info, the
        per-request call alone was a few percent of the daemon's CPU under load)."""

    @property
    def method_names(self) -> frozenset[str]:
        return frozenset(self._methods)

    def start(self, message: Request | InvalidMessage | RefusedRequest) -> Reply | Awaitable[Reply]:
        """Run one request as far as it goes without waiting.

        Returns the encoded reply (or None), or an awaitable that produces it when the handler
        has to wait. Never raises except ``BaseException``.
        """
        kind = type(message)
        if kind is InvalidMessage:
            return encode_error(message.code, message.message)
        if kind is RefusedRequest:
            return encode_error(message.code, message.message, message.id)
        assert kind is Request
        handler = self._methods.get(message.method)
        if handler is None:
            if not message.has_id:
                return None
            return encode_error(METHOD_NOT_FOUND, "method not found", message.id)
        started = time.perf_counter()
        try:
            outcome = handler(message.params)
        except PhdError as exc:
            self._log_done(message, started, error=exc.code)
            return encode_error(exc.code, exc.message, message.id) if message.has_id else None
        except Exception:
            self._log.exception("handler failed", method=message.method, req_id=message.id.decode())
            return self._internal_error(message)
        if inspect.isawaitable(outcome):
            return self._finish(message, outcome, started)
        self._log_done(message, started)
        return self._encode(message, outcome)

    async def run(self, message: Request | InvalidMessage | RefusedRequest | Batch) -> Reply:
        """Run a message to completion (batches element by element, in order)."""
        if type(message) is Batch:
            replies: list[bytes] = []
            for item in message.items:
                reply = self.start(item)
                if reply is not None and not isinstance(reply, bytes):
                    reply = await reply
                if reply is not None:
                    replies.append(reply)
            return encode_batch(replies) if replies else None
        assert type(message) is not Batch
        reply = self.start(message)
        if reply is None or isinstance(reply, bytes):
            return reply
        return await reply

    async def _finish(self, message: Request, outcome: Awaitable[Any], started: float) -> Reply:
        try:
            result = await outcome
        except PhdError as exc:
            self._log_done(message, started, error=exc.code)
            return encode_error(exc.code, exc.message, message.id) if message.has_id else None
        except Exception:
            self._log.exception("handler failed", method=message.method, req_id=message.id.decode())
            return self._internal_error(message)
        self._log_done(message, started)
        return self._encode(message, result)

    def _encode(self, message: Request, result: Any) -> Reply:
        if not message.has_id:
            return None
        try:
            return encode_result(result, message.id)
        except Exception:
            self._log.exception("unserialisable result", method=message.method)
            return self._internal_error(message)

    @staticmethod
    def _internal_error(message: Request) -> Reply:
        if not message.has_id:
            return None
        return encode_error(INTERNAL_ERROR, "internal error (see the server log)", message.id)

    def _log_done(self, message: Request, started: float, error: int | None = None) -> None:
        if not self._log_requests:
            return
        self._log.debug(
            "request",
            method=message.method,
            req_id=message.id.decode(),
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            error=error,
        )
