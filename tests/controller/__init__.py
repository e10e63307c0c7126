"""Tests of the controller camera against the real simulated controller, on loopback TCP and on a
pty pair made with ``os.openpty()``; no mocks of the protocol.

:func:`running_controller` starts a simulated controller and yields a :class:`Rig` whose
``options`` are the keyword arguments of a matching ``ControllerSettings`` (the same keys a
profile's camera table has). Everything runs 20 times faster than real time.
"""

from __future__ import annotations

import os
import tty
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from phdserver.cameras.controller import (
    ControllerCamera,
    ControllerSettings,
    SimController,
    SimControllerSettings,
    serve_sim_controller,
)
from phdserver.cameras.sensor_model import SensorConfig

TIME_SCALE = 0.05
WIDTH, HEIGHT = 64, 48
TRANSPORTS = ("tcp", "serial")


@dataclass(frozen=True, slots=True, kw_only=True)
class Rig:
    sim: SimController
    options: dict[str, Any]
    image_dir: Path

    def settings(self, **overrides: Any) -> ControllerSettings:
        return ControllerSettings(**{**self.options, **overrides})

    def camera(self, **overrides: Any) -> ControllerCamera:
        return ControllerCamera(self.settings(**overrides))


@asynccontextmanager
async def running_controller(tmp_path: Path, transport: str = "tcp", *,
                             width: int = WIDTH, height: int = HEIGHT,
                             **sim_options: Any) -> AsyncIterator[Rig]:
    """A simulated controller on free loopback ports (and a pty for ``transport="serial"``)."""
    image_dir = tmp_path / "controller-images"
    fds: list[int] = []
    serial_fd = None
    if transport == "serial":
        master, slave = os.openpty()
        tty.setraw(slave)
        fds += [master, slave]
        serial_fd = master
    settings = SimControllerSettings(
        image_dir=str(image_dir), port=0, status_port=0, serial_fd=serial_fd,
        sensor=SensorConfig(width=width, height=height, seed=11), time_scale=TIME_SCALE,
        **sim_options)
    try:
        async with trio.open_nursery() as nursery:
            sim = await nursery.start(serve_sim_controller, settings)
            options: dict[str, Any] = {"image_dir": str(image_dir), "time_scale": TIME_SCALE,
                                       "timeout_s": 20.0}
            if transport == "serial":
                options["url"] = os.ttyname(fds[1])
            else:
                options.update(host="127.0.0.1", port=sim.port, status_port=sim.status_port)
            try:
                yield Rig(sim=sim, options=options, image_dir=image_dir)
            finally:
                nursery.cancel_scope.cancel()
    finally:
        for fd in fds:
            os.close(fd)
