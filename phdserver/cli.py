"""Command line: ``phdserver serve | call | darks | defects``.

``serve`` runs the daemon. The other commands are clients of a running daemon and use only its
public JSON-RPC API, so anything they do a script can do too.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from phdserver import __version__
from phdserver.cameras.controller import add_sim_controller_arguments, run_sim_controller
from phdserver.cli_calibration import add_calibration_commands, calibration_handlers
from phdserver.client import Client, RemoteError
from phdserver.config import CameraSettings, Config, ConfigError, load_config, parse_size
from phdserver.errors import find_os_error
from phdserver.logs import LOG_FORMATS, configure_logging

__all__ = ["main"]


def _positive_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="daemon address (127.0.0.1)")
    parser.add_argument("--port", type=int, help="daemon port (4400 + instance - 1)")
    parser.add_argument("--instance", type=int, default=1, help="PHD2 instance number (1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phdserver", description=__doc__)
    parser.add_argument("--version", action="version", version=f"phdserver {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

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

    call = commands.add_parser("call", help="call one JSON-RPC method and print the result")
    call.add_argument("method")
    call.add_argument("params", nargs="?", help="JSON array or object")
    _add_connection_args(call)

    sim = commands.add_parser("sim-controller", help="run a simulated camera controller")
    add_sim_controller_arguments(sim)

    darks = commands.add_parser("darks", help="dark library")
    darks_commands = darks.add_subparsers(dest="action", required=True)
    darks_build = darks_commands.add_parser("build", help="build a dark library")
    darks_build.add_argument("--min-exposure", type=int, default=1000, help="ms (1000)")
    darks_build.add_argument("--max-exposure", type=int, default=15000, help="ms (15000)")
    darks_build.add_argument("--exposures", help="explicit comma-separated list of ms")
    darks_build.add_argument("--frames", type=int, default=5, help="frames per exposure (5)")
    darks_build.add_argument("--notes", default="", help="note saved in the library (65 chars)")
    darks_build.add_argument("--modify", action="store_true",
                             help="merge into the existing library")
    darks_build.add_argument("--combine", default="mean",
                             choices=("mean", "median", "minmax_mean", "sigma_clip"))
    _add_connection_args(darks_build)
    darks_status = darks_commands.add_parser("status", help="show the dark library status")
    _add_connection_args(darks_status)

    defects = commands.add_parser("defects", help="defect (bad-pixel) map")
    defects_commands = defects.add_subparsers(dest="action", required=True)
    defects_build = defects_commands.add_parser("build", help="build a defect map")
    defects_build.add_argument("--exposure", type=int, default=15000, help="ms (15000)")
    defects_build.add_argument("--frames", type=int, default=10, help="frames (10)")
    defects_build.add_argument("--hot", type=int, default=75, help="hot aggressiveness (75)")
    defects_build.add_argument("--cold", type=int, default=75, help="cold aggressiveness (75)")
    _add_connection_args(defects_build)
    defects_refine = defects_commands.add_parser("refine", help="re-select from saved darks")
    defects_refine.add_argument("--hot", type=int, default=75)
    defects_refine.add_argument("--cold", type=int, default=75)
    _add_connection_args(defects_refine)
    defects_status = defects_commands.add_parser("status", help="show the defect map status")
    _add_connection_args(defects_status)
    add_calibration_commands(commands)
    return parser


# -- serve ---------------------------------------------------------------------------------
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


def serve(args: argparse.Namespace) -> int:
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


# -- client commands -----------------------------------------------------------------------
def _connect(args: argparse.Namespace) -> Client:
    port = args.port if args.port is not None else 4400 + args.instance - 1
    try:
        return Client(args.host, port)
    except OSError as exc:
        raise SystemExit(f"phdserver: cannot connect to {args.host}:{port}: {exc}") from None


def call(args: argparse.Namespace) -> int:
    params = None
    if args.params is not None:
        try:
            params = json.loads(args.params)
        except json.JSONDecodeError as exc:
            print(f"phdserver: params are not JSON: {exc}", file=sys.stderr)
            return 2
    with _connect(args) as client:
        try:
            result = client.call(args.method, params)
        except RemoteError as exc:
            print(f"error {exc.code}: {exc.message}", file=sys.stderr)
            return 1
    print(json.dumps(result, indent=2))
    return 0


class ProgressBar:
    """A one-line bar on a terminal; one line per status change otherwise."""

    def __init__(self, stream: Any = sys.stderr, width: int = 30) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._width = width
        self._last_status: str | None = None

    def __call__(self, state: dict[str, Any]) -> None:
        progress = float(state.get("progress", 0))
        status = str(state.get("status", ""))
        message = str(state.get("status_message", ""))
        if self._tty:
            filled = int(self._width * progress / 100)
            bar = "#" * filled + "." * (self._width - filled)
            self._stream.write(f"\r[{bar}] {progress:5.1f}% {message[:60]:<60}")
            self._stream.flush()
        elif status != self._last_status:
            self._stream.write(f"{progress:5.1f}% {status}: {message}\n")
        self._last_status = status

    def done(self) -> None:
        if self._tty:
            self._stream.write("\n")


def _run_operation(args: argparse.Namespace, method: str, params: dict[str, Any]) -> int:
    with _connect(args) as client:
        try:
            if not client.call("get_connected"):
                client.call("set_connected", [True], timeout=60)
            started = client.call(method, params)
        except RemoteError as exc:
            print(f"error {exc.code}: {exc.message}", file=sys.stderr)
            return 1
        op_id = started["operation_id"]
        print(f"operation {op_id} started", file=sys.stderr)
        bar = ProgressBar()
        try:
            final = client.follow_operation(op_id, bar)
        except KeyboardInterrupt:
            bar.done()
            print("cancelling...", file=sys.stderr)
            outcome = client.call("cancel_operation", {"operation_id": op_id})
            print(f"operation {op_id}: {outcome['status']}", file=sys.stderr)
            return 130
        bar.done()
    print(json.dumps(final, indent=2))
    return 0 if final["status"] == "completed" else 1


def darks(args: argparse.Namespace) -> int:
    if args.action == "status":
        return call(argparse.Namespace(**vars(args), method="get_dark_library_status",
                                       params=None))
    params: dict[str, Any] = {"frame_count": args.frames, "notes": args.notes,
                              "modify_existing": args.modify, "combine": args.combine,
                              "min_exposure": args.min_exposure,
                              "max_exposure": args.max_exposure}
    if args.exposures:
        params["exposures"] = [int(v) for v in args.exposures.split(",")]
    return _run_operation(args, "start_dark_library_build", params)


def defects(args: argparse.Namespace) -> int:
    if args.action == "status":
        return call(argparse.Namespace(**vars(args), method="get_defect_map_status",
                                       params=None))
    if args.action == "refine":
        return call(argparse.Namespace(**vars(args), method="refine_defect_map", params=json.dumps(
            {"hot_aggressiveness": args.hot, "cold_aggressiveness": args.cold})))
    return _run_operation(args, "start_defect_map_build", {
        "exposure_time": args.exposure, "frame_count": args.frames,
        "hot_aggressiveness": args.hot, "cold_aggressiveness": args.cold})


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"serve": serve, "call": call, "darks": darks, "defects": defects,
                "sim-controller": run_sim_controller}
    handlers.update(calibration_handlers())
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
