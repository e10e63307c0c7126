"""The controller camera against the simulated controller, over loopback TCP and over a pty."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trio
from astropy.io import fits
from structlog.testing import capture_logs

from phdserver.cameras.base import Camera, FrameType, Subframe
from phdserver.cameras.controller import ControllerCamera, ControllerSettings
from phdserver.cameras.sensor_model import SensorConfig, SensorModel
from phdserver.errors import CameraError
from tests.controller import HEIGHT, TRANSPORTS, WIDTH, running_controller


def expose_lines(commands: list[str]) -> list[str]:
    return [c for c in commands if c.startswith("expose ")]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_connect_reports_the_sensor_and_a_dark_is_taken_with_the_shutter_closed(
    tmp_path: Path, transport: str
) -> None:
    async with running_controller(tmp_path, transport) as rig:
        camera = rig.camera(headers={"OBSERVER": "Test Person"})
        assert not camera.connected
        await camera.connect()
        assert isinstance(camera, Camera)
        info = camera.info
        assert (info.width, info.height) == (WIDTH, HEIGHT)
        assert info.has_shutter
        assert not info.has_cooler
        assert info.max_binning == 1
        rig.sim.commands.clear()

        frame = await camera.capture(1500, frame_type=FrameType.DARK)
        assert frame.data.shape == (HEIGHT, WIDTH)
        assert frame.data.dtype == np.uint16
        assert frame.exposure_ms == 1500
        commands = list(rig.sim.commands)
        expose = expose_lines(commands)
        assert len(expose) == 1
        _verb, shutter, seconds, fileroot, mode = expose[0].split()
        assert (shutter, seconds, mode) == ("False", "1.500", "single")
        assert len(fileroot) == 15
        assert fileroot.endswith("d")
        assert fileroot[:14].isdigit()
        headers = commands[: commands.index(expose[0])]
        assert headers == ["header IMAGETYP dark", "header EXPTIME 1.500",
                           "header CREATOR phdserver 0.1.0", "header OBSERVER Test Person"]
        # The pixels are the simulator's sensor model's, from the file the controller wrote.
        expected = SensorModel(SensorConfig(width=WIDTH, height=HEIGHT, seed=11)).render(
            1.5, FrameType.DARK, 15.0, 0)
        assert np.array_equal(frame.data, expected)
        with fits.open(rig.image_dir / f"{fileroot}.fits") as hdus:
            assert hdus[0].header["IMAGETYP"] == "dark"
            assert hdus[0].header["OBSERVER"] == "Test Person"
            assert hdus[0].header["SHUTTER"] == "closed"
        assert frame.headers["SHUTTER"] == "closed"

        light = await camera.capture(1000, frame_type=FrameType.LIGHT)
        assert expose_lines(list(rig.sim.commands))[-1].split()[1] == "True"
        assert light.data.mean() > frame.data.mean() - 50  # sky and stars, no dark current less
        bias = await camera.capture(0, frame_type=FrameType.BIAS)
        assert expose_lines(list(rig.sim.commands))[-1].split()[1:3] == ["False", "0.000"]
        assert bias.data.shape == (HEIGHT, WIDTH)
        await camera.disconnect()
        assert not camera.connected


async def test_tcp_polls_status_on_the_status_port_while_exposing(tmp_path: Path) -> None:
    async with running_controller(tmp_path) as rig:
        camera = rig.camera()
        await camera.connect()
        rig.sim.commands.clear()
        await camera.capture(3000, frame_type=FrameType.DARK)
        commands = list(rig.sim.commands)
        after = commands[commands.index(expose_lines(commands)[0]) + 1 :]
        assert after
        assert set(after) == {"status"}


async def test_each_capture_gets_a_new_file_and_stale_files_are_never_read(
    tmp_path: Path
) -> None:
    async with running_controller(tmp_path) as rig:
        camera = rig.camera()
        await camera.connect()
        rig.image_dir.mkdir(exist_ok=True)
        await camera.capture(0, frame_type=FrameType.BIAS)
        await camera.capture(0, frame_type=FrameType.BIAS)
        roots = [line.split()[3] for line in expose_lines(list(rig.sim.commands))]
        assert len(set(roots)) == 2
        assert sorted(p.name for p in rig.image_dir.glob("*.fits")) == sorted(
            f"{r}.fits" for r in roots)


async def test_images_can_be_deleted_after_reading(tmp_path: Path) -> None:
    async with running_controller(tmp_path) as rig:
        camera = rig.camera(keep_images=False)
        await camera.connect()
        await camera.capture(0, frame_type=FrameType.BIAS)
        assert not list(rig.image_dir.glob("*.fits"))


async def test_the_size_comes_from_the_profile_or_a_bias_when_the_status_has_none(
    tmp_path: Path
) -> None:
    async with running_controller(tmp_path, report_size=False) as rig:
        alerts: list[tuple[str, str]] = []
        camera = ControllerCamera(rig.settings(),
                                  on_alert=lambda m, k: alerts.append((m, k)))
        await camera.connect()
        assert (camera.info.width, camera.info.height) == (WIDTH, HEIGHT)
        assert expose_lines(list(rig.sim.commands))[0].split()[1:3] == ["False", "0.000"]
        assert "learned from a bias frame" in alerts[0][0]
        await camera.disconnect()

        rig.sim.commands.clear()
        profiled = rig.camera(width=WIDTH, height=HEIGHT)
        await profiled.connect()
        assert profiled.info.width == WIDTH
        assert not expose_lines(list(rig.sim.commands))
        wrong = rig.camera(width=WIDTH * 2, height=HEIGHT)
        await wrong.connect()
        with pytest.raises(CameraError, match=r"is 64x48, expected 128x48"):
            await wrong.capture(0, frame_type=FrameType.BIAS)


async def test_a_size_mismatch_with_the_status_refuses_to_connect(tmp_path: Path) -> None:
    async with running_controller(tmp_path) as rig:
        camera = rig.camera(width=100, height=100)
        with pytest.raises(CameraError, match=r"profile says 100x100 but the controller at "
                                              r"127\.0\.0\.1:\d+ reports 64x48"):
            await camera.connect()
        assert not camera.connected


async def test_subframes_are_cropped_and_binning_is_refused(tmp_path: Path) -> None:
    async with running_controller(tmp_path) as rig:
        camera = rig.camera()
        await camera.connect()
        full = await camera.capture(0, frame_type=FrameType.BIAS)
        part = await camera.capture(0, frame_type=FrameType.BIAS,
                                    subframe=Subframe(x=4, y=2, width=10, height=8))
        assert part.data.shape == (8, 10)
        assert part.subframe == Subframe(x=4, y=2, width=10, height=8)
        assert full.data.shape == (HEIGHT, WIDTH)
        with pytest.raises(CameraError, match="binning 2 not supported"):
            await camera.capture(0, binning=2)
        with pytest.raises(CameraError, match="outside the 64x48 sensor"):
            await camera.capture(0, subframe=Subframe(x=60, y=0, width=10, height=8))
        with pytest.raises(CameraError, match="no sensor temperature"):
            await camera.cooler_status()
        with pytest.raises(CameraError, match="no cooler"):
            await camera.set_cooler(True, -10)


async def test_a_capture_needs_a_connection(tmp_path: Path) -> None:
    camera = ControllerCamera(ControllerSettings(image_dir=str(tmp_path)))
    with pytest.raises(CameraError, match="not connected"):
        await camera.capture(1000)
    with pytest.raises(CameraError, match="not connected"):
        _ = camera.info


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancel_sends_clear_and_returns_fast(tmp_path: Path, transport: str) -> None:
    """A 10-minute exposure (30 s at this time scale) cancelled while exposing ends at once,
    after ``clear``; the controller is idle and the next capture works."""
    async with running_controller(tmp_path, transport) as rig:
        camera = rig.camera()
        await camera.connect()
        rig.sim.commands.clear()
        with trio.fail_after(10), capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                cancel = trio.CancelScope()

                async def capture() -> None:
                    with cancel:
                        await camera.capture(600_000, frame_type=FrameType.DARK)

                nursery.start_soon(capture)
                await rig.sim.wait_state("exposing")
                assert rig.sim.status_fields()["EXPOSING"] == "1111"
                cancel.cancel()
        assert cancel.cancelled_caught
        # The clear was answered (on a line: after the aborted expose's own reply, dropped).
        assert not [entry for entry in logs if entry["event"] == "clear failed"]
        commands = list(rig.sim.commands)
        assert commands[-1] == "clear 20"
        assert rig.sim.status_fields()["IDLE"] == "1111"
        assert not rig.sim.images
        frame = await camera.capture(0, frame_type=FrameType.BIAS)
        assert frame.data.shape == (HEIGHT, WIDTH)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_abort_ends_the_capture_with_an_error(tmp_path: Path, transport: str) -> None:
    async with running_controller(tmp_path, transport) as rig:
        camera = rig.camera()
        await camera.connect()
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                failures: list[CameraError] = []

                async def capture() -> None:
                    try:
                        await camera.capture(600_000, frame_type=FrameType.DARK)
                    except CameraError as exc:
                        failures.append(exc)

                nursery.start_soon(capture)
                await rig.sim.wait_state("exposing")
                assert rig.sim.status_fields()["EXPOSING"] == "1111"
                await camera.abort()
        assert [str(f) for f in failures] == ["Controller: exposure aborted"]
        assert list(rig.sim.commands)[-1] == "clear 20"
        await camera.capture(0, frame_type=FrameType.BIAS)


async def test_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FITS keyword"):
        ControllerSettings(image_dir=str(tmp_path), headers={"observer": "x"})
    with pytest.raises(ValueError, match="both width and height"):
        ControllerSettings(image_dir=str(tmp_path), width=10)
    with pytest.raises(ValueError, match="port"):
        ControllerSettings(image_dir=str(tmp_path), port=0)
    with pytest.raises(ValueError, match="image_name"):
        ControllerSettings(image_dir=str(tmp_path), image_name="../{fileroot}.fits")
    with pytest.raises(ValueError, match="time_scale"):
        ControllerSettings(image_dir=str(tmp_path), time_scale=0)


async def test_without_a_status_port_the_expose_reply_ends_the_wait(tmp_path: Path) -> None:
    async with running_controller(tmp_path) as rig:
        camera = rig.camera(status_port=0)
        await camera.connect()
        rig.sim.commands.clear()
        frame = await camera.capture(2000, frame_type=FrameType.DARK)
        assert frame.data.shape == (HEIGHT, WIDTH)
        commands = list(rig.sim.commands)
        assert commands[-2:] == [expose_lines(commands)[0], "status"]


async def test_pyserial_socket_urls_work(tmp_path: Path) -> None:
    async with running_controller(tmp_path, serial="socket://127.0.0.1:0") as rig:
        assert rig.sim.serial_path is not None
        camera = rig.camera(url=rig.sim.serial_path)
        await camera.connect()
        assert camera.where.startswith("socket://127.0.0.1:")
        frame = await camera.capture(1000, frame_type=FrameType.DARK)
        assert frame.data.shape == (HEIGHT, WIDTH)
        await camera.disconnect()


async def test_a_missing_image_directory_is_refused_at_connect(tmp_path: Path) -> None:
    async with running_controller(tmp_path) as rig:
        camera = rig.camera(image_dir=str(tmp_path / "not-mounted"))
        with pytest.raises(CameraError, match=r"image directory .*not-mounted does not exist"):
            await camera.connect()
