"""Test helpers: a real daemon on a free loopback port, and a line client that speaks to it.

Tests talk to the server over real TCP, like N.I.N.A., Ekos or a script would. Waiting is done
on received lines with timeouts, never with sleeps.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from phdserver.app import App
from phdserver.config import CameraSettings, Config, Profile, ServerSettings

DEFAULT_TIMEOUT = 20.0


def make_config(data_dir: Path, *, width: int = 320, height: int = 240,
                time_scale: float = 0.001, seed: int = 7, **camera: Any) -> Config:
    options = {"width": width, "height": height, "time_scale": time_scale, "seed": seed}
    options.update(camera)
    profile = Profile(id=1, name="Simulator",
                      camera=CameraSettings(type="simulator", options=options))
    return Config(server=ServerSettings(listen="127.0.0.1", port=0), profiles=(profile,),
                  data_dir=data_dir, log_level="warning")


@asynccontextmanager
async def running_server(config: Config, **app_kwargs: Any) -> AsyncIterator[tuple[App, int]]:
    """Start the daemon on port 0; yields the app and its port; stops it on exit."""
    app = App(config, **app_kwargs)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(app.serve)
        port = listeners[0].socket.getsockname()[1]
        try:
            yield app, port
        finally:
            nursery.cancel_scope.cancel()


def unavailable(what: str, reason: str) -> None:
    """Skip a test that needs something this machine lacks; with ``CI=true``, fail instead."""
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"{what} cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def file_bytes(path: Path) -> bytes:
    """A file's bytes (a plain function, so async tests can read small files directly)."""
    return path.read_bytes()


def hidden_files(directory: Path) -> list[str]:
    """Names starting with a dot: what an interrupted save leaves (temporary, staged files)."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def free_port() -> int:
    """A loopback port that was free a moment ago (for daemons started as processes)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_listening(process: trio.Process, timeout: float = 60) -> bytes:
    """Read the daemon's JSON log on stderr until it says it listens; return what was read."""
    assert process.stderr is not None
    seen = b""
    with trio.fail_after(timeout):
        while b'"listening"' not in seen:
            chunk = await process.stderr.receive_some(4096)
            assert chunk, seen.decode()
            seen += chunk
    return seen


@asynccontextmanager
async def serve_process(*args: str, launcher: Sequence[str] = ()
                        ) -> AsyncIterator[tuple[trio.Process, int]]:
    """``phdserver serve ARGS`` as a real process on a free port, yielded once it listens.

    ``launcher`` goes before the interpreter (a command that sets something up and then execs
    the rest of its arguments). Its stderr is drained in the background (a full pipe would stop
    the daemon); at the end a process still running is killed.
    """
    port = free_port()
    process = await trio.lowlevel.open_process(
        [*launcher, sys.executable, "-m", "phdserver", "serve", "--port", str(port),
         "--log-format", "json", *args],
        stderr=subprocess.PIPE)
    try:
        await wait_listening(process)

        async def drain() -> None:
            assert process.stderr is not None
            while await process.stderr.receive_some(65536):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            try:
                yield process, port
            finally:
                if process.returncode is None:
                    process.kill()
                await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


class LineClient:
    """A raw protocol client: writes bytes, reads CRLF lines, keeps events apart."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buffer = bytearray()
        self.raw_lines: list[bytes] = []
        self.events: list[dict[str, Any]] = []
        self._next_id = 1

    @classmethod
    async def connect(cls, port: int, *, read_greeting: bool = True) -> LineClient:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = cls(stream)
        if read_greeting:
            await client.wait_event("AppState")
        return client

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def read_line(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """One raw line including its terminator."""
        with trio.fail_after(timeout):
            while b"\n" not in self._buffer:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise EOFError("server closed the connection")
                self._buffer += chunk
        index = self._buffer.index(b"\n")
        line = bytes(self._buffer[: index + 1])
        del self._buffer[: index + 1]
        self.raw_lines.append(line)
        return line

    async def read_message(self, timeout: float = DEFAULT_TIMEOUT) -> Any:
        line = await self.read_line(timeout)
        assert line.endswith(b"\r\n"), f"line not CRLF-terminated: {line!r}"
        return orjson.loads(line)

    async def reply(self, request_id: Any, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The reply with this id; events that come first are kept in ``events``."""
        with trio.fail_after(timeout):
            while True:
                message = await self.read_message()
                if isinstance(message, dict) and "Event" in message:
                    self.events.append(message)
                    continue
                if isinstance(message, dict) and message.get("id") == request_id:
                    return message
                raise AssertionError(f"unexpected message {message!r}")

    async def call_raw(self, method: str, params: Any = None, **extra: Any) -> dict[str, Any]:
        request_id = self._next_id
        self._next_id += 1
        request: dict[str, Any] = {"method": method, "id": request_id, **extra}
        if params is not None:
            request["params"] = params
        await self.send_raw(orjson.dumps(request) + b"\r\n")
        return await self.reply(request_id)

    async def call(self, method: str, params: Any = None) -> Any:
        reply = await self.call_raw(method, params)
        assert "error" not in reply, f"{method} failed: {reply['error']}"
        return reply["result"]

    async def error(self, method: str, params: Any = None) -> dict[str, Any]:
        reply = await self.call_raw(method, params)
        assert "error" in reply, f"{method} unexpectedly succeeded: {reply}"
        return reply["error"]

    async def wait_event(self, name: str, predicate: Callable[[dict[str, Any]], bool] | None = None,
                         timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The first event named ``name`` (already received or arriving) that matches."""
        for index, event in enumerate(self.events):
            if event.get("Event") == name and (predicate is None or predicate(event)):
                del self.events[: index + 1]
                return event
        self.events.clear()
        with trio.fail_after(timeout):
            while True:
                message = await self.read_message()
                if not isinstance(message, dict) or "Event" not in message:
                    raise AssertionError(f"unexpected reply {message!r}")
                if message["Event"] == name and (predicate is None or predicate(message)):
                    return message
                self.events.append(message)


async def wait_operation(client: LineClient, op_id: int,
                         timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Wait for OperationFinished of ``op_id``."""
    return await client.wait_event("OperationFinished", lambda e: e["OperationId"] == op_id,
                                   timeout=timeout)


def with_camera_options(config: Config, **options: Any) -> Config:
    profile = config.selected_profile
    merged = {**profile.camera.options, **options}
    camera = CameraSettings(type=profile.camera.type, options=merged)
    return config.with_selected_profile(dataclasses.replace(profile, camera=camera))


class SyncClient:
    """One blocking TCP connection that reads CRLF lines (events included)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buffer = b""

    def read_line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "server closed the connection"
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line + b"\n"

    def call(self, method: str) -> Any:
        self.sock.sendall(orjson.dumps({"method": method, "id": "x"}) + b"\r\n")
        while True:
            message = orjson.loads(self.read_line())
            if isinstance(message, dict) and message.get("id") == "x":
                return message["result"]
