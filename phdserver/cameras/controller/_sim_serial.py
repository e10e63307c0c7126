"""The simulated controller's serial side: a pty, an open tty, a device or ``socket://``.

Split from :mod:`.simulated`, which serves TCP; both answer through the same
:class:`~.simulated.SimController`.
"""

from __future__ import annotations

import os
import termios
import tty
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from phdserver.cameras.controller.simulated import SimController, SimControllerSettings

__all__ = ["open_tty", "serve_serial"]


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
        await trio.serve_listeners(controller.serve_line, listeners)
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
        await controller.serve_fd(fd)
    finally:
        for descriptor in (fd, *keep):
            os.close(descriptor)
