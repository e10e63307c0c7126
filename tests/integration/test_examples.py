"""The example scripts work against a real daemon (they are what users copy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio

from tests.support import make_config, running_server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def run_example(name: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process([sys.executable, str(EXAMPLES / name), *args],
                                      capture_stdout=True, capture_stderr=True, check=False)


async def test_defect_map_example(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path, time_scale=0.0005)) as (app, port):
        done = await run_example("test_defect_map_api.py", "--port", str(port),
                                 "--exposure-ms", "1000", "--frames", "5")
        assert done.returncode == 0, done.stderr.decode()
        out = done.stdout.decode()
        assert "defect map saved:" in out
        assert app.calibration_paths.defect_map.exists()


async def test_dark_library_example(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path, time_scale=0.0005)) as (app, port):
        done = await run_example("build_dark_library.py", "--port", str(port),
                                 "--min-ms", "1000", "--max-ms", "2000", "--frames", "2",
                                 "--notes", "example")
        assert done.returncode == 0, done.stderr.decode()
        out = done.stdout.decode()
        assert "finished: completed" in out
        assert "capturing_darks" in out
        assert app.calibration_paths.dark_library.exists()
