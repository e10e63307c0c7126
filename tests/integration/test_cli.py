"""The command line against a live daemon: ``call``, ``darks build``, ``defects build``,
and ``serve`` itself as a process that starts, answers and stops on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.support import LineClient, free_port, make_config, running_server, wait_listening


async def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process([sys.executable, "-m", "phdserver", *args],
                                      capture_stdout=True, capture_stderr=True, check=False)


async def test_call_and_builds(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path, time_scale=0.0005)) as (app, port):
        done = await cli("call", "get_exposure_durations", "--port", str(port))
        assert done.returncode == 0
        assert json.loads(done.stdout)[-1] == 30000
        done = await cli("call", "set_exposure", "[123]", "--port", str(port))
        assert done.returncode == 1
        assert b"could not set exposure duration" in done.stderr
        done = await cli("darks", "build", "--port", str(port), "--exposures", "1000,2000",
                         "--frames", "2", "--notes", "cli")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["status"] == "completed"
        assert b"saving_library" in done.stderr
        assert app.calibration_paths.dark_library.exists()
        done = await cli("defects", "build", "--port", str(port), "--exposure", "1000",
                         "--frames", "5")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["details"]["defect_count"] > 0
        done = await cli("defects", "status", "--port", str(port))
        assert json.loads(done.stdout)["loaded"] is True


@pytest.mark.parametrize("how", ["signal", "shutdown"])
async def test_serve_process_starts_answers_and_stops(tmp_path: Path, how: str) -> None:
    port = free_port()
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "phdserver", "serve", "--port", str(port), "--data-dir",
         str(tmp_path), "--sim-size", "160x120", "--log-format", "json"],
        stderr=subprocess.PIPE)
    try:
        await wait_listening(process, timeout=30)
        client = await LineClient.connect(port)
        assert await client.call("get_app_state") == "Stopped"
        await client.aclose()
        if how == "signal":
            process.send_signal(signal.SIGTERM)
        else:
            client = await LineClient.connect(port)
            assert await client.call("shutdown") == 0
            await client.aclose()
        with trio.fail_after(15):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
