"""``phdserver sim-controller``: a simulated camera controller (its options live with it)."""

from __future__ import annotations

import argparse
from typing import Any

from phdserver.cameras.controller import add_sim_controller_arguments, run_sim_controller

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    add_sim_controller_arguments(commands.add_parser(
        "sim-controller", help="run a simulated camera controller"))


def run(args: argparse.Namespace) -> int:
    return run_sim_controller(args)
