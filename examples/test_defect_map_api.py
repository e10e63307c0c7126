#!/usr/bin/env python3
"""Build a defect (bad-pixel) map through phdserver's JSON-RPC API with a raw socket.

Nothing but the standard library: this is what an observatory script or another program's
integration test needs to do. Usage::

    python examples/test_defect_map_api.py [--host 127.0.0.1] [--port 4400]
        [--exposure-ms 15000] [--frames 10] [--hot 75] [--cold 75]

It connects the camera if needed, starts the build, polls ``get_defect_map_build_status``
once a second (while also reading the ``OperationProgress`` events that arrive on the same
connection), and prints the counts of hot and cold pixels when the map is saved.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time


class RpcConnection:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=60)
        self.buffer = b""
        self.next_id = 1

    def read_message(self) -> dict:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("phdserver closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return json.loads(line)

    def call(self, method: str, params: object = None) -> object:
        request = {"method": method, "id": self.next_id}
        if params is not None:
            request["params"] = params
        self.next_id += 1
        self.sock.sendall(json.dumps(request).encode() + b"\r\n")
        while True:
            message = self.read_message()
            if "Event" in message:
                if message["Event"] == "OperationProgress":
                    print(f"  event: {message['Status']} {message['Progress']}% "
                          f"{message['Message']}")
                continue
            if message.get("id") != request["id"]:
                continue
            if "error" in message:
                error = message["error"]
                raise RuntimeError(f"{method}: {error['message']} (code {error['code']})")
            return message["result"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4400)
    parser.add_argument("--exposure-ms", type=int, default=15000)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--hot", type=int, default=75)
    parser.add_argument("--cold", type=int, default=75)
    args = parser.parse_args()

    rpc = RpcConnection(args.host, args.port)
    if not rpc.call("get_connected"):
        rpc.call("set_connected", [True])
    started = rpc.call("start_defect_map_build", {
        "exposure_time": args.exposure_ms, "frame_count": args.frames,
        "hot_aggressiveness": args.hot, "cold_aggressiveness": args.cold,
    })
    op_id = started["operation_id"]
    print(f"defect map build started: operation {op_id}")
    while True:
        status = rpc.call("get_defect_map_build_status", {"operation_id": op_id})
        print(f"{status['status']:>22} {status['progress']:5.1f}%  "
              f"{status['frames_captured']}/{status['total_frames']} frames  {status['message']}")
        if status["status"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(1)
    if status["status"] != "completed":
        print(f"build {status['status']}: {status.get('error', '')}", file=sys.stderr)
        return 1
    print(f"defect map saved: {status['defect_count']} pixels "
          f"({status['hot_count']} hot, {status['cold_count']} cold)")
    print(json.dumps(rpc.call("get_defect_map_status"), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
