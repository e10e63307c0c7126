"""Every way a controller can fail ends the capture with a message that says which, names the
controller and the command, and leaves the camera usable once the controller behaves again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trio
from astropy.io import fits

from phdserver.cameras.base import FrameType
from phdserver.cameras.controller import ControllerCamera, ControllerSettings, Fault
from phdserver.errors import CameraError
from tests.controller import TRANSPORTS, Rig, running_controller

FAST_FAILURE = {"readout_time_s": 10.0, "transfer_time_s": 1.0, "image_timeout_s": 10.0}
"""Shorter waits for the faults that end in a timeout (0.5 s here, not 2 s)."""

EXPECTED = {
    Fault.SILENT: r"did not answer 'expose'",
    Fault.ERROR: r"replied ERROR to 'expose': simulated fault: expose failed",
    Fault.CMD_ERROR: r"'expose' failed on the controller at .* \(cmd_error\): simulated fault",
    Fault.MALFORMED: r"malformed reply to 'expose' from the controller at .*: malformed status "
                     r"dict: the payload is not a Python literal",
    Fault.DROP: r"dropped during 'expose'",
    Fault.NOIMAGE: r"no usable image after 'expose' on the controller at .*: image .*\.fits was "
                   r"not ready within 0\.5 s: it does not exist",
}


def where(rig: Rig) -> str:
    options = rig.options
    return options["url"] if "url" in options else f"127.0.0.1:{options['port']}"


async def capture_fails(camera: ControllerCamera, pattern: str) -> CameraError:
    with trio.fail_after(10), pytest.raises(CameraError, match=pattern) as caught:
        await camera.capture(1000, frame_type=FrameType.DARK)
    return caught.value


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("fault", list(Fault), ids=lambda f: f.value)
async def test_each_fault_fails_the_capture_clearly_and_the_camera_recovers(
    tmp_path: Path, transport: str, fault: Fault
) -> None:
    async with running_controller(tmp_path, transport) as rig:
        camera = rig.camera(**FAST_FAILURE)
        await camera.connect()
        rig.sim.fault = fault
        error = await capture_fails(camera, EXPECTED[fault])
        assert error.message.startswith("Controller: ")
        assert where(rig) in error.message
        if fault is not Fault.NOIMAGE:  # the exposure did not complete: the controller is cleared
            assert "clear 20" in list(rig.sim.commands)
        rig.sim.fault = None
        frame = await camera.capture(1000, frame_type=FrameType.DARK)
        assert frame.data.shape == (camera.info.height, camera.info.width)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_silent_status_names_the_controller_and_the_command(
    tmp_path: Path, transport: str
) -> None:
    async with running_controller(tmp_path, transport, fault=Fault.SILENT,
                                  fault_command="status") as rig:
        camera = rig.camera(timeout_s=10.0)
        with trio.fail_after(10), pytest.raises(CameraError) as caught:
            await camera.connect()
        message = caught.value.message
        assert message == (f"Controller: the controller at {where(rig)} did not answer "
                           "'status': no reply within 0.5 s")
        assert not camera.connected
        rig.sim.fault = None
        await camera.connect()
        assert camera.connected


async def test_a_malformed_status_during_the_exposure_fails_it(tmp_path: Path) -> None:
    async with running_controller(tmp_path) as rig:
        camera = rig.camera()
        await camera.connect()
        rig.sim.fault, rig.sim.fault_command = Fault.MALFORMED, "status"
        await capture_fails(camera, r"malformed reply to 'status' from the controller at "
                                    r"127\.0\.0\.1:\d+")


async def test_a_header_refused_stops_before_exposing(tmp_path: Path) -> None:
    async with running_controller(tmp_path) as rig:
        camera = rig.camera()
        await camera.connect()
        rig.sim.fault, rig.sim.fault_command = Fault.ERROR, "header"
        await capture_fails(camera, r"replied ERROR to 'header'")
        assert not [c for c in rig.sim.commands if c.startswith("expose")]


async def test_nobody_listening_is_a_connect_failure(tmp_path: Path) -> None:
    with trio.socket.socket() as sock:  # a port that is free and stays closed
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        camera = ControllerCamera(ControllerSettings(image_dir=str(tmp_path), host="127.0.0.1",
                                                     port=port, status_port=port))
        with pytest.raises(CameraError, match=rf"Controller: cannot reach the controller for "
                                              rf"'status': cannot connect to 127\.0\.0\.1:{port}"):
            await camera.connect()


async def test_a_missing_serial_device_is_a_connect_failure(tmp_path: Path) -> None:
    camera = ControllerCamera(ControllerSettings(image_dir=str(tmp_path),
                                                 url=str(tmp_path / "ttyNONE")))
    with pytest.raises(CameraError, match=r"cannot open serial line .*ttyNONE"):
        await camera.connect()


async def test_an_image_that_is_not_one_2d_image_is_refused(tmp_path: Path) -> None:
    """A complete file of the wrong kind fails at once with what was wrong."""
    async with running_controller(tmp_path) as rig:
        camera = rig.camera()
        await camera.connect()
        rig.sim.fault = Fault.NOIMAGE
        async with trio.open_nursery() as nursery:
            nursery.start_soon(capture_fails, camera, r"not a single 2-D image")
            await rig.sim.wait_state("exposing")
            fileroot = [c for c in rig.sim.commands if c.startswith("expose")][-1].split()[3]
            path = rig.image_dir / f"{fileroot}.fits"
            await trio.to_thread.run_sync(
                lambda: fits.PrimaryHDU(np.zeros((2, 3, 4), np.uint16)).writeto(path))


async def test_a_controller_in_its_error_state_is_reported(tmp_path: Path) -> None:
    async with running_controller(tmp_path) as rig:
        rig.sim.error_state = "CCD power failure"
        camera = rig.camera()
        with pytest.raises(CameraError, match=r"127\.0\.0\.1:\d+ reports an error: CCD power "
                                              r"failure"):
            await camera.connect()
        rig.sim.error_state = None
        await camera.connect()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(capture_fails, camera,
                               r"reports an error during the exposure: shutter stuck")
            await rig.sim.wait_state("exposing")
            rig.sim.error_state = "shutter stuck"
        assert list(rig.sim.commands)[-1] == "clear 20"
