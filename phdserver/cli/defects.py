"""``phdserver defects build|refine|status``: PHD2's defect map, built by a running daemon."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import add_connection_args, call_method, run_operation

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    defects = commands.add_parser("defects", help="defect (bad-pixel) map")
    actions = defects.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="build a defect map")
    build.add_argument("--exposure", type=int, default=15000, help="ms (15000)")
    build.add_argument("--frames", type=int, default=10, help="frames (10)")
    build.add_argument("--hot", type=int, default=75, help="hot aggressiveness (75)")
    build.add_argument("--cold", type=int, default=75, help="cold aggressiveness (75)")
    add_connection_args(build)
    refine = actions.add_parser("refine", help="re-select from saved darks")
    refine.add_argument("--hot", type=int, default=75)
    refine.add_argument("--cold", type=int, default=75)
    add_connection_args(refine)
    status = actions.add_parser("status", help="show the defect map status")
    add_connection_args(status)


def run(args: argparse.Namespace) -> int:
    if args.action == "status":
        return call_method(args, "get_defect_map_status")
    if args.action == "refine":
        return call_method(args, "refine_defect_map", {"hot_aggressiveness": args.hot,
                                                       "cold_aggressiveness": args.cold})
    return run_operation(args, "start_defect_map_build", {
        "exposure_time": args.exposure, "frame_count": args.frames,
        "hot_aggressiveness": args.hot, "cold_aggressiveness": args.cold})
