"""Soak test: one daemon, many builds and clients, memory and file descriptors watched.

``python -m benchmarks.soak [SECONDS]`` (default 300) starts ``phdserver serve`` with a
1280×960 simulator running 100× faster than real time and, until the time is up, opens a new
connection per round and does one of four things in turn: a dark library (2 exposures × 3
frames), a defect map (5 frames), looping for 0.3 s, or 200 status calls. Builds are polled with
``get_operation`` until they end. Every 20 rounds it prints the seconds elapsed, the daemon's
resident memory (MiB) and its open file descriptors; at the end, the rounds, the failures and the
first and last memory figures. A daemon that leaks shows memory or descriptors that keep
climbing; any failed call or build is printed as it happens. Not part of ``make bench``: it
compares against nothing, it watches for drift over time.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from benchmarks._client import LineSocket, running_daemon

BUILDS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("start_dark_library_build", {"exposures": [100, 200], "frame_count": 3}),
    ("start_defect_map_build", {"exposure_time": 1000, "frame_count": 5}),
)
ENDED = ("completed", "failed", "cancelled")


def resident_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return -1


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def one_round(client: LineSocket, round_number: int) -> str | None:
    """Do round ``round_number``'s action; the reason it failed, or None."""
    kind = round_number % 4
    if kind == 2:
        client.call("loop")
        time.sleep(0.3)
        client.call("stop_capture", request_id=2)
        return None
    if kind == 3:
        for request_id in range(1, 201):
            client.call("get_app_state", request_id=request_id)
        return None
    method, params = BUILDS[kind]
    started = client.call(method, params)
    for _ in range(1200):
        snapshot = client.call("get_operation", {"operation_id": started["operation_id"]},
                               request_id=2)
        if snapshot["status"] in ENDED:
            ok = snapshot["status"] == "completed"
            return None if ok else f"{method} ended {snapshot['status']}: {snapshot['message']}"
        time.sleep(0.05)
    return f"{method} did not end within a minute"


def main(seconds: float) -> int:
    with running_daemon("--sim-size", "1280x960", "--sim-time-scale", "0.01") as daemon:
        pid = daemon.process.pid
        with LineSocket.connect(daemon.port) as client:
            client.call("set_connected", [True])
        started = time.monotonic()
        rounds = failures = 0
        first: int | None = None
        last = 0
        while time.monotonic() - started < seconds:
            if not daemon.alive():
                print(f"the daemon exited with status {daemon.process.poll()}", flush=True)
                failures += 1
                break
            rounds += 1
            try:
                with LineSocket.connect(daemon.port) as client:
                    problem = one_round(client, rounds)
            except Exception as exc:  # a soak reports every failure and goes on
                problem = f"{type(exc).__name__}: {exc}"
            if problem is not None:
                failures += 1
                print(f"round {rounds}: {problem}", flush=True)
            if rounds % 20 == 0:
                last = resident_mib(pid)
                first = last if first is None else first
                print(f"{time.monotonic() - started:6.0f} s  {last} MiB  {open_fds(pid)} fds",
                      flush=True)
        print(f"{rounds} rounds, {failures} failed; resident memory {first} -> {last} MiB")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]) if len(sys.argv) > 1 else 300.0))
