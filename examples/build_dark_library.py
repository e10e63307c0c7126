#!/usr/bin/env python3
"""Build a dark library and follow it through the events phdserver broadcasts.

Standard library only. Usage::

    python examples/build_dark_library.py [--host 127.0.0.1] [--port 4400]
        [--min-ms 1000] [--max-ms 15000] [--frames 5] [--notes "..."]

Instead of polling, it listens: every client receives ``OperationProgress`` on each status
change (and at most twice a second in between) and ``OperationFinished`` at the end.
Ctrl-C cancels the build (the previous library is kept as it was).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4400)
    parser.add_argument("--min-ms", type=int, default=1000)
    parser.add_argument("--max-ms", type=int, default=15000)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--notes", default="")
    args = parser.parse_args()

    sock = socket.create_connection((args.host, args.port), timeout=None)
    lines = sock.makefile("rb")
    next_id = 0

    def send(method: str, params: object = None) -> int:
        nonlocal next_id
        next_id += 1
        request = {"jsonrpc": "2.0", "method": method, "id": next_id}
        if params is not None:
            request["params"] = params
        sock.sendall(json.dumps(request).encode() + b"\r\n")
        return next_id

    def reply(request_id: int) -> object:
        for raw in lines:
            message = json.loads(raw)
            if message.get("id") == request_id and "jsonrpc" in message:
                if "error" in message:
                    raise RuntimeError(message["error"]["message"])
                return message["result"]
        raise ConnectionError("phdserver closed the connection")

    if not reply(send("get_connected")):
        reply(send("set_connected", [True]))
    started = reply(send("start_dark_library_build", {
        "min_exposure": args.min_ms, "max_exposure": args.max_ms,
        "frame_count": args.frames, "notes": args.notes,
    }))
    op_id = started["operation_id"]
    print(f"operation {op_id}: exposures {started['exposures']} ms, "
          f"{args.frames} frames each")
    try:
        for raw in lines:
            event = json.loads(raw)
            if event.get("OperationId") != op_id:
                continue
            if event["Event"] == "OperationProgress":
                print(f"{event['Progress']:5.1f}%  {event['Status']:<22} {event['Message']}")
            elif event["Event"] == "OperationFinished":
                print(f"finished: {event['Status']} {event.get('Error', '')}".rstrip())
                status = reply(send("get_dark_library_status"))
                print(json.dumps(status, indent=2))
                return 0 if event["Status"] == "completed" else 1
    except KeyboardInterrupt:
        print("cancelling...")
        send("cancel_dark_library_build", {"operation_id": op_id})
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
