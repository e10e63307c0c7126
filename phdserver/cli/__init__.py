"""Command line: ``phdserver serve | call | darks | defects | masters | calibrate | scheduler |
sim-controller``, one module per command group.

``serve`` runs the daemon. ``call``, ``darks`` and ``defects`` are clients of a running daemon
and use only its public JSON-RPC API, so anything they do a script can do too. ``masters`` and
``calibrate`` work on the library without a daemon; ``scheduler`` on N.I.N.A.'s Target
Scheduler database. Each group module has ``add_parser`` and
``run``; the modules import nothing heavy until a command runs, so every command starts fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from phdserver import __version__

from . import calibrate, call, darks, defects, masters, scheduler, serve, sim_controller
from .serve import config_from_args

__all__ = ["build_parser", "config_from_args", "main"]

_GROUPS = {"serve": serve, "call": call, "sim-controller": sim_controller, "darks": darks,
           "defects": defects, "masters": masters, "calibrate": calibrate,
           "scheduler": scheduler}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phdserver", description=__doc__)
    parser.add_argument("--version", action="version", version=f"phdserver {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in _GROUPS.values():
        group.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _GROUPS[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
