"""``phdserver serve``: run the daemon, its settings from the TOML config and the flags.

Flags override the config; camera flags apply to the selected profile's camera.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from phdserver import __version__
from phdserver.config import CameraSettings, Config, ConfigError, load_config, parse_size
from phdserver.errors import find_os_error
from phdserver.logs import LOG_FORMATS, configure_logging

__all__ = ["add_parser", "config_from_args", "run"]


def _positive_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def add_parser(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument("--listen", help="address to listen on (127.0.0.1; 0.0.0.0 for all)")
    serve.add_argument("--port", type=int, help="TCP port (4400 + instance - 1)")
    serve.add_argument("--instance", type=int, help="PHD2 instance number (1)")
    serve.add_argument("--allow", action="append", default=None, metavar="CIDR",
                       help="only accept clients from this network (repeatable)")
    serve.add_argument("--data-dir", type=Path,
                       help="data directory (~/.local/share/phdserver; ~/.phd2 shares PHD2's)")
    serve.add_argument("--camera", choices=("simulator", "indi", "controller"),
                       help="camera backend of the selected profile")
    serve.add_argument("--sim-size", type=parse_size, metavar="WxH", help="simulator sensor size")
    serve.add_argument("--sim-time-scale", type=_positive_float, metavar="X",
                       help="simulated exposures take X times their duration (0.01: 100x faster)")
    serve.add_argument("--sim-seed", type=int, metavar="N", help="simulator random seed")
    serve.add_argument("--indi-host", help="INDI server host (localhost)")
    serve.add_argument("--indi-port", type=int, help="INDI server port (7624)")
    serve.add_argument("--indi-device", help='INDI camera device, e.g. "CCD Simulator"')
    serve.add_argument("--indi-chip", choices=("ccd", "guider"), help="INDI chip (ccd)")
    serve.add_argument("--controller-host", help="camera controller host (localhost)")
    serve.add_argument("--controller-port", type=int, help="controller command port (5000)")
    serve.add_argument("--controller-status-port", type=int,
                       help="controller status port (5001; 0: none)")
    serve.add_argument("--controller-image-dir",
                       help="directory the controller writes its images to, as seen here")
    serve.add_argument("--controller-url",
                       help="serial line instead of TCP: /dev/ttyUSB0, socket://host:port, a pty")
    serve.add_argument("--log-format", choices=LOG_FORMATS, help="log format (auto)")
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"))


def config_from_args(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    server = config.server
    server_changes: dict[str, Any] = {}
    if args.listen is not None:
        server_changes["listen"] = args.listen
    if args.port is not None:
        server_changes["port"] = args.port
    if args.instance is not None:
        server_changes["instance"] = args.instance
    if args.allow:
        try:
            server_changes["allow"] = tuple(ipaddress.ip_network(a, strict=False)
                                            for a in args.allow)
        except ValueError as exc:
            raise ConfigError(f"--allow: {exc}") from None
    changes: dict[str, Any] = {"server": dataclasses.replace(server, **server_changes)}
    if args.data_dir is not None:
        changes["data_dir"] = args.data_dir.expanduser()
    if args.log_format is not None:
        changes["log_format"] = args.log_format
    if args.log_level is not None:
        changes["log_level"] = args.log_level
    config = dataclasses.replace(config, **changes)
    return _camera_overrides(config, args)


def _camera_overrides(config: Config, args: argparse.Namespace) -> Config:
    profile = config.selected_profile
    camera = profile.camera
    kind = args.camera or camera.type
    options = dict(camera.options) if kind == camera.type else {}
    name = None
    if kind == "simulator":
        if args.sim_size is not None:
            options["width"], options["height"] = args.sim_size
        if args.sim_time_scale is not None:
            options["time_scale"] = args.sim_time_scale
        if args.sim_seed is not None:
            options["seed"] = args.sim_seed
    elif kind == "indi":
        for flag, key in (("indi_host", "host"), ("indi_port", "port"),
                          ("indi_device", "device"), ("indi_chip", "chip")):
            value = getattr(args, flag)
            if value is not None:
                options[key] = value
        if "device" not in options:
            raise ConfigError("--camera indi needs --indi-device (or device in the profile)")
        if args.camera == "indi" and camera.type != "indi":
            name = f"INDI {options['device']}"
    elif kind == "controller":
        for flag, key in (("controller_host", "host"), ("controller_port", "port"),
                          ("controller_status_port", "status_port"),
                          ("controller_image_dir", "image_dir"), ("controller_url", "url")):
            value = getattr(args, flag)
            if value is not None:
                options[key] = value
        if args.sim_time_scale is not None:  # match a sim-controller's --sim-time-scale
            options["time_scale"] = args.sim_time_scale
        if "image_dir" not in options:
            raise ConfigError("--camera controller needs --controller-image-dir "
                              "(or image_dir in the profile)")
        if args.camera == "controller" and camera.type != "controller":
            name = "Controller"
    if kind == camera.type and options == dict(camera.options):
        return config
    return config.with_selected_profile(
        profile.with_camera(CameraSettings(type=kind, options=options), name=name))


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"phdserver: {exc}", file=sys.stderr)
        return 2
    log = configure_logging(config.log_format, config.log_level)
    from phdserver.app import App

    try:
        app = App(config, logger=log)
    except OSError as exc:
        print(f"phdserver: cannot use data directory {config.data_dir}: {exc}", file=sys.stderr)
        return 2
    log.info("starting", version=__version__, data_dir=str(config.data_dir),
             profile=config.selected_profile.name, camera=config.selected_profile.camera.type)

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

            async def watch_signals() -> None:
                async for signum in signals:
                    log.info("signal received", signal=signal.Signals(signum).name)
                    app.shutdown_requested.set()
                    return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_signals)
                await app.serve()  # returns after a signal or the shutdown method
                nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except Exception as exc:
        os_error = find_os_error(exc)
        if os_error is None:
            raise
        log.error("cannot start", error=str(os_error))
        return 1
    return 0
