"""``phdserver darks build|status``: PHD2's dark library, built by a running daemon."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import add_connection_args, call_method, run_operation

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    darks = commands.add_parser("darks", help="dark library")
    actions = darks.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="build a dark library")
    build.add_argument("--min-exposure", type=int, default=1000, help="ms (1000)")
    build.add_argument("--max-exposure", type=int, default=15000, help="ms (15000)")
    build.add_argument("--exposures", help="explicit comma-separated list of ms")
    build.add_argument("--frames", type=int, default=5, help="frames per exposure (5)")
    build.add_argument("--notes", default="", help="note saved in the library (65 chars)")
    build.add_argument("--modify", action="store_true", help="merge into the existing library")
    build.add_argument("--combine", default="mean",
                       choices=("mean", "median", "minmax_mean", "sigma_clip"))
    add_connection_args(build)
    status = actions.add_parser("status", help="show the dark library status")
    add_connection_args(status)


def run(args: argparse.Namespace) -> int:
    if args.action == "status":
        return call_method(args, "get_dark_library_status")
    params: dict[str, Any] = {"frame_count": args.frames, "notes": args.notes,
                              "modify_existing": args.modify, "combine": args.combine,
                              "min_exposure": args.min_exposure,
                              "max_exposure": args.max_exposure}
    if args.exposures:
        params["exposures"] = [int(v) for v in args.exposures.split(",")]
    return run_operation(args, "start_dark_library_build", params)
