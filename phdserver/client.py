"""A small blocking client for the CLI: call methods and follow an operation's progress.

It speaks the protocol as any third-party script would (one connection, integer ids, replies
told from events by the ``jsonrpc`` member), so the CLI exercises the public API only.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

__all__ = ["Client", "RemoteError"]


class RemoteError(Exception):
    """The server answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message


class Client:
    def __init__(self, host: str = "127.0.0.1", port: int = 4400, timeout: float = 30.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self._next_id = 1
        self.events: list[dict[str, Any]] = []

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_line(self, timeout: float | None) -> dict[str, Any] | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return orjson.loads(line)

    def call(self, method: str, params: Any = None, timeout: float = 30.0) -> Any:
        request: dict[str, Any] = {"method": method, "id": self._next_id}
        if params is not None:
            request["params"] = params
        self._next_id += 1
        self._sock.sendall(orjson.dumps(request) + b"\r\n")
        deadline = time.monotonic() + timeout
        while True:
            message = self._read_line(max(deadline - time.monotonic(), 0.001))
            if message is None:
                raise TimeoutError(f"no reply to {method} within {timeout} s")
            if "jsonrpc" not in message:
                self.events.append(message)
                continue
            if message.get("id") != request["id"]:
                continue
            if "error" in message:
                raise RemoteError(message["error"]["code"], message["error"]["message"])
            return message["result"]

    def next_events(self, timeout: float) -> Iterator[dict[str, Any]]:
        """Events already received, then any arriving within ``timeout`` seconds."""
        while self.events:
            yield self.events.pop(0)
        message = self._read_line(timeout)
        while message is not None:
            if "jsonrpc" not in message:
                yield message
            message = self._read_line(0.001) if b"\n" in self._buffer else None

    def follow_operation(self, op_id: int, on_progress: Callable[[dict[str, Any]], None],
                         poll_s: float = 2.0) -> dict[str, Any]:
        """Report progress until the operation ends; returns its final ``get_operation``."""
        while True:
            for event in self.next_events(poll_s):
                if event.get("OperationId") != op_id:
                    continue
                if event.get("Event") == "OperationFinished":
                    return self.call("get_operation", {"operation_id": op_id})
                if event.get("Event") == "OperationProgress":
                    on_progress({"status": event["Status"], "progress": event["Progress"],
                                 "status_message": event["Message"]})
            snapshot = self.call("get_operation", {"operation_id": op_id})
            if snapshot["status"] in ("completed", "failed", "cancelled"):
                return snapshot
            on_progress(snapshot)
