"""The simulated controller's serial side: a pty, an open tty, a device or ``socket://``.

Split from :mod:`.simulated`, which serves TCP; both answer through the same
:class:`~.simulated.SimController`. On a line, commands are answered strictly in order, one
line each, while being carried out concurrently, so ``clear`` can stop an exposure whose reply
is still owed.
"""

from __future__ import annotations

import os
import termios
import tty
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import trio

from phdserver.cameras.controller._protocol import MAX_REPLY_BYTES

if TYPE_CHECKING:
    from phdserver.cameras.controller.simulated import (
        Answer,
        SimController,
        SimControllerSettings,
    )

__all__ = ["open_tty", "serve_fd", "serve_line", "serve_serial"]


@dataclass(slots=True)
class _Slot:
    """A reply owed, in the order its command arrived."""

    ready: trio.Event = field(default_factory=trio.Event)
    answer: Answer | None = None


def open_tty(path: str, baudrate: int) -> int:
    """Open a serial device raw at ``baudrate`` (kept as it is when termios has no such rate)."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    speed = getattr(termios, f"B{baudrate}", None)
    if speed is not None:
        attrs = termios.tcgetattr(fd)
        attrs[4] = attrs[5] = speed
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
    return fd


async def serve_serial(controller: SimController, settings: SimControllerSettings, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``controller`` on the serial line ``settings`` names, until cancelled.

    ``socket://host:port`` accepts line connections (pyserial's ``socket://`` URL connects to
    it); ``serial_fd`` serves an open tty descriptor (a duplicate, closed at the end); ``pty``
    makes a new pty pair and reports the slave's path; anything else is a device path. Every
    tty is put in raw mode (no echo, no line editing). ``controller.serial_path`` says where.
    """
    spec = settings.serial
    if spec is not None and spec.startswith("socket://"):
        host, _, port = spec.removeprefix("socket://").rpartition(":")
        listeners = await trio.open_tcp_listeners(int(port), host=host or None)
        controller.serial_path = "socket://{}:{}".format(*listeners[0].socket.getsockname()[:2])
        task_status.started()
        await trio.serve_listeners(partial(serve_line, controller), listeners)
        return
    keep: list[int] = []
    if settings.serial_fd is not None:
        fd = os.dup(settings.serial_fd)
        controller.serial_path = f"fd {settings.serial_fd}"
    elif spec == "pty":
        fd, slave = os.openpty()
        tty.setraw(slave)
        keep.append(slave)  # held open so that reads never fail with EIO
        controller.serial_path = os.ttyname(slave)
    else:
        assert spec is not None
        fd = open_tty(spec, settings.baudrate)
        controller.serial_path = spec
    if os.isatty(fd):
        tty.setraw(fd)  # no echo, no line editing: bytes pass as they are
    try:
        task_status.started()
        await serve_fd(controller, fd)
    finally:
        for descriptor in (fd, *keep):
            os.close(descriptor)


async def serve_line(controller: SimController, stream: trio.abc.Stream) -> None:
    """A serial line: command lines in, reply lines out, in order, until end of file."""
    send, receive = trio.open_memory_channel[_Slot](64)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_write_replies, stream, receive)
        async with send:
            buffer = bytearray()
            while True:
                try:
                    data = await stream.receive_some(4096)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                if not data:
                    break
                buffer += data
                while (index := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:index]).decode("ascii", errors="replace")
                    del buffer[: index + 1]
                    if line.strip():
                        slot = _Slot()
                        await send.send(slot)
                        nursery.start_soon(_answer_into, controller, line, slot)
                if len(buffer) > MAX_REPLY_BYTES:
                    buffer.clear()


async def _answer_into(controller: SimController, line: str, slot: _Slot) -> None:
    try:
        slot.answer = await controller.answer(line)
    finally:
        slot.ready.set()


async def _write_replies(stream: trio.abc.Stream,
                         receive: trio.MemoryReceiveChannel[_Slot]) -> None:
    async with receive:
        async for slot in receive:
            await slot.ready.wait()
            answer = slot.answer
            if answer is None or answer.reply is None:
                continue
            data = answer.reply[: len(answer.reply) // 2] if answer.drop else answer.reply
            try:
                await stream.send_all(data if answer.drop else data + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return


async def serve_fd(controller: SimController, fd: int) -> None:
    """Serve a tty descriptor (a duplicate). While no one holds the other end of a pty,
    reads fail with EIO: wait and try again."""
    stream = trio.lowlevel.FdStream(os.dup(fd))
    async with stream:
        while True:
            await serve_line(controller, stream)
            await trio.sleep(0.05)
