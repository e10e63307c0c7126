"""The two commands a user runs, as real processes: ``phdserver sim-controller`` and
``phdserver serve --camera controller`` (TCP, then a pty serial line), and a dark library built
with ``phdserver darks build`` through them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from astropy.io import fits

from tests.controller.test_cli import read_banner
from tests.support import free_port, wait_listening

PHDSERVER = [sys.executable, "-m", "phdserver"]


async def stop(process: trio.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGINT)
        with trio.move_on_after(20):
            await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


@pytest.mark.parametrize("link", ["tcp", "serial"])
async def test_daemon_and_simulated_controller_as_processes(tmp_path: Path, link: str) -> None:
    images = tmp_path / "images"
    controller = await trio.lowlevel.open_process(
        [*PHDSERVER, "sim-controller", "--port", "0", "--status-port", "0", "--image-dir",
         str(images), "--serial", "pty", "--sim-size", "128x96", "--sim-time-scale", "0.02"],
        stderr=subprocess.PIPE)
    daemon: trio.Process | None = None
    try:
        assert controller.stderr is not None
        banner = await read_banner(controller.stderr)
        if link == "tcp":
            camera = ["--controller-host", "127.0.0.1", "--controller-port", banner[1],
                      "--controller-status-port", banner[2]]
        else:
            camera = ["--controller-url", banner[3]]
        port = free_port()
        daemon = await trio.lowlevel.open_process(
            [*PHDSERVER, "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"),
             "--camera", "controller", "--controller-image-dir", str(images),
             "--sim-time-scale", "0.02", "--log-format", "json", *camera],
            stderr=subprocess.PIPE)
        await wait_listening(daemon)
        with trio.fail_after(120):
            done = await trio.run_process(
                [*PHDSERVER, "darks", "build", "--port", str(port), "--min-exposure", "1000",
                 "--max-exposure", "2000", "--frames", "2"],
                capture_stdout=True, capture_stderr=True, check=False)
        assert done.returncode == 0, done.stderr.decode()
        assert json.loads(done.stdout)["status"] == "completed"
        library = tmp_path / "data" / "darks_defects" / "PHD2_dark_lib_1.fit"
        with fits.open(library) as hdus:
            assert [h.header["EXPOSURE"] for h in hdus] == [1.0, 1.5, 2.0]
            assert hdus[0].data.shape == (96, 128)
    finally:
        if daemon is not None:
            await stop(daemon)
        await stop(controller)
