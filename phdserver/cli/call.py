"""``phdserver call METHOD [JSON]``: one JSON-RPC call to a running daemon, its result printed."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._common import add_connection_args, call_method

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    call = commands.add_parser("call", help="call one JSON-RPC method and print the result")
    call.add_argument("method")
    call.add_argument("params", nargs="?", help="JSON array or object")
    add_connection_args(call)


def run(args: argparse.Namespace) -> int:
    params = None
    if args.params is not None:
        try:
            params = json.loads(args.params)
        except json.JSONDecodeError as exc:
            print(f"phdserver: params are not JSON: {exc}", file=sys.stderr)
            return 2
    return call_method(args, args.method, params)
