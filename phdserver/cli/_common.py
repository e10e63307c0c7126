"""What the client commands share: reaching the daemon, a progress bar, following an operation.

Kept free of numpy, astropy and the daemon's own modules, so ``phdserver call`` starts fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from phdserver.client import Client, RemoteError

__all__ = ["ProgressBar", "add_connection_args", "call_method", "connect", "run_operation"]


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="daemon address (127.0.0.1)")
    parser.add_argument("--port", type=int, help="daemon port (4400 + instance - 1)")
    parser.add_argument("--instance", type=int, default=1, help="PHD2 instance number (1)")


def connect(args: argparse.Namespace) -> Client:
    port = args.port if args.port is not None else 4400 + args.instance - 1
    try:
        return Client(args.host, port)
    except OSError as exc:
        raise SystemExit(f"phdserver: cannot connect to {args.host}:{port}: {exc}") from None


def call_method(args: argparse.Namespace, method: str, params: Any = None) -> int:
    """Call one method on the daemon and print its result as JSON (exit status 1 on error)."""
    with connect(args) as client:
        try:
            result = client.call(method, params)
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


def run_operation(args: argparse.Namespace, method: str, params: dict[str, Any]) -> int:
    """Start an operation on the daemon (connecting the camera first), follow it with a bar,
    cancel it on Ctrl-C; exit status 0 only when it completed."""
    with connect(args) as client:
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
