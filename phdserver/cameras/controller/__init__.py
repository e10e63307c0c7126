"""Camera-controller cameras: the command/status protocol of reference/controller.md over TCP or
a serial line (protocol/controller.md says how phdserver speaks it), and a simulated controller
that speaks it too.

No background task is needed::

    camera = ControllerCamera(ControllerSettings(host="ccd-host", image_dir="/mnt/images"))
    await camera.connect()
    frame = await camera.capture(15000, frame_type=FrameType.DARK)

The simulated controller runs in a nursery, or as ``phdserver sim-controller``::

    controller = await nursery.start(serve_sim_controller, SimControllerSettings(image_dir=...))

The public names are loaded on first use (PEP 562): ``phdserver``'s command line adds the
``sim-controller`` options from here on every run, and should not pay for astropy, numpy and
pyserial unless the simulator or the camera is actually used.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phdserver.cameras.controller._protocol import COMMAND_PORT, STATUS_PORT
from phdserver.config import parse_size
from phdserver.errors import find_os_error

if TYPE_CHECKING:
    from phdserver.cameras.controller.camera import ControllerCamera, ControllerSettings
    from phdserver.cameras.controller.simulated import (
        Fault,
        SimController,
        SimControllerSettings,
        serve_sim_controller,
    )

__all__ = [
    "ControllerCamera",
    "ControllerSettings",
    "Fault",
    "SimController",
    "SimControllerSettings",
    "add_sim_controller_arguments",
    "run_sim_controller",
    "serve_sim_controller",
]

_LAZY = {
    "ControllerCamera": "camera",
    "ControllerSettings": "camera",
    "Fault": "simulated",
    "SimController": "simulated",
    "SimControllerSettings": "simulated",
    "serve_sim_controller": "simulated",
}
FAULT_CHOICES = ("silent", "error", "cmd_error", "malformed", "drop", "noimage")
"""The values of :class:`~.simulated.Fault` (a test keeps them equal)."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


# -- phdserver sim-controller ---------------------------------------------------------------------


def add_sim_controller_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``phdserver sim-controller`` options."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=COMMAND_PORT, help="command port (5000)")
    parser.add_argument("--status-port", type=int, default=STATUS_PORT,
                        help="status port (5001)")
    parser.add_argument("--image-dir", type=Path, required=True,
                        help="directory the images are written to")
    parser.add_argument("--serial", metavar="PATH-or-URL",
                        help="also serve a serial line: 'pty' (a new pty; its path is printed), "
                             "a tty device, or socket://HOST:PORT to listen on")
    parser.add_argument("--sim-size", type=parse_size, default=(1280, 960), metavar="WxH",
                        help="sensor size (1280x960)")
    parser.add_argument("--sim-time-scale", type=float, default=1.0, metavar="X",
                        help="exposures and readout take X times their duration (1.0)")
    parser.add_argument("--sim-seed", type=int, default=0, metavar="N", help="sensor seed (0)")
    parser.add_argument("--readout-time", type=float, default=1.0, metavar="S",
                        help="simulated readout time in seconds (1.0)")
    parser.add_argument("--fault", choices=FAULT_CHOICES,
                        help="misbehave on every --fault-command")
    parser.add_argument("--fault-command", default="expose",
                        help="the command the fault applies to (expose)")


def run_sim_controller(args: argparse.Namespace) -> int:
    """Run ``phdserver sim-controller`` until SIGINT or SIGTERM; the process exit code."""
    import trio

    from phdserver.cameras.controller.simulated import (
        Fault,
        SimControllerSettings,
        serve_sim_controller,
    )
    from phdserver.cameras.sensor_model import SensorConfig

    width, height = args.sim_size
    try:
        settings = SimControllerSettings(
            image_dir=str(args.image_dir.expanduser()), host=args.host, port=args.port,
            status_port=args.status_port, serial=args.serial,
            sensor=SensorConfig(width=width, height=height, seed=args.sim_seed),
            time_scale=args.sim_time_scale, readout_s=args.readout_time,
            fault=Fault(args.fault) if args.fault else None, fault_command=args.fault_command)
    except ValueError as exc:
        print(f"phdserver sim-controller: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                controller = await nursery.start(serve_sim_controller, settings)
                where = (f"commands on {settings.host}:{controller.port}, status on "
                         f"{settings.host}:{controller.status_port}")
                if controller.serial_path is not None:
                    where += f", serial line {controller.serial_path}"
                print(f"phdserver sim-controller: {where}, images in {settings.image_dir}",
                      file=sys.stderr, flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except (OSError, BaseExceptionGroup) as exc:
        os_error = find_os_error(exc)
        if os_error is None:
            raise
        print(f"phdserver sim-controller: {os_error}", file=sys.stderr)
        return 1
    return 0
