"""``phdserver sim-controller`` as a process: its options, its banner, serving TCP and a pty,
and a clean exit on SIGINT."""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from phdserver.cameras.base import FrameType
from phdserver.cameras.controller import (
    FAULT_CHOICES,
    ControllerCamera,
    ControllerSettings,
    add_sim_controller_arguments,
)
from phdserver.cameras.controller.simulated import FAULTS

SIM_CONTROLLER = [sys.executable, "-m", "phdserver", "sim-controller"]
BANNER = re.compile(r"commands on 127\.0\.0\.1:(\d+), status on 127\.0\.0\.1:(\d+), "
                    r"serial line (\S+), images in (\S+)")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_sim_controller_arguments(parser)
    return parser.parse_args(argv)


def test_the_command_line_knows_every_fault() -> None:
    assert FAULT_CHOICES == FAULTS


def test_options_and_their_defaults(tmp_path: Path) -> None:
    args = parse("--image-dir", str(tmp_path))
    assert (args.port, args.status_port, args.host) == (5000, 5001, "127.0.0.1")
    assert args.sim_size == (1280, 960)
    assert args.sim_time_scale == 1.0
    assert args.fault is None
    assert args.serial is None
    args = parse("--image-dir", "d", "--sim-size", "64x48", "--fault", "noimage",
                 "--serial", "pty")
    assert args.sim_size == (64, 48)
    assert args.fault == "noimage"
    for bad in (["--sim-size", "64"], ["--fault", "explode"], []):
        with pytest.raises(SystemExit):
            parse(*(["--image-dir", "d"] if bad else []), *bad)


async def read_banner(stream: trio.abc.ReceiveStream) -> re.Match[str]:
    text = b""
    with trio.fail_after(60):
        while (match := BANNER.search(text.decode(errors="replace"))) is None:
            chunk = await stream.receive_some(4096)
            assert chunk, f"sim-controller ended early: {text!r}"
            text += chunk
    return match


async def test_the_process_serves_tcp_and_a_pty_and_exits_on_sigint(tmp_path: Path) -> None:
    image_dir = tmp_path / "images"
    process = await trio.lowlevel.open_process(
        [*SIM_CONTROLLER, "--port", "0", "--status-port", "0",
         "--image-dir", str(image_dir), "--serial", "pty", "--sim-size", "64x48",
         "--sim-time-scale", "0.05"],
        stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        match = await read_banner(process.stderr)
        port, status_port, pty_path = int(match[1]), int(match[2]), match[3]
        assert Path(match[4]) == image_dir
        common = {"image_dir": str(image_dir), "time_scale": 0.05, "timeout_s": 20.0}
        for settings in (ControllerSettings(host="127.0.0.1", port=port,
                                            status_port=status_port, **common),
                         ControllerSettings(url=pty_path, **common)):
            camera = ControllerCamera(settings)
            await camera.connect()
            assert (camera.info.width, camera.info.height) == (64, 48)
            frame = await camera.capture(1000, frame_type=FrameType.DARK)
            assert frame.data.shape == (48, 64)
            await camera.disconnect()
        process.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if process.stderr is not None:
            await process.stderr.aclose()


async def test_a_port_in_use_is_reported(tmp_path: Path) -> None:
    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await trio.run_process(
            [*SIM_CONTROLLER, "--port", str(port), "--status-port", "0",
             "--image-dir", str(tmp_path)],
            capture_stderr=True, check=False)
    assert result.returncode == 1
    assert b"phdserver sim-controller:" in result.stderr
    assert b"in use" in result.stderr
