"""IndiCamera against Debian's indiserver + indi_simulator_ccd (no mocks of INDI)."""

from __future__ import annotations

import numpy as np
import pytest
import trio

from phdserver.cameras.base import Camera, FrameType, Subframe
from phdserver.cameras.indi import IndiCamera
from phdserver.cameras.indi._xml import Event, SetVector
from phdserver.errors import CameraError
from tests.indi.conftest import SIMULATOR, Alerts, make_camera
from tests.indi.drivers.indiserver import IndiServer

pytestmark = pytest.mark.indi


async def test_connect_describes_the_simulator(sim_camera: IndiCamera) -> None:
    assert isinstance(sim_camera, Camera)
    assert sim_camera.connected
    info = sim_camera.info
    assert (info.width, info.height) == (1280, 1024)
    assert info.pixel_size_um == pytest.approx(5.2)
    assert info.bits_per_pixel == 16
    assert info.saturation == 65535
    assert info.max_binning == 4
    assert info.has_cooler
    assert not info.has_shutter
    assert info.gain_range == (0, 100)
    assert info.name == sim_camera.name == "INDI Camera [CCD Simulator]"
    # what connect() set up on the device
    client = sim_camera.client
    upload = client.property(SIMULATOR, "UPLOAD_MODE")
    assert upload is not None
    assert upload.switch("UPLOAD_CLIENT")


async def test_dark_frame_is_requested_as_dark(sim_camera: IndiCamera) -> None:
    frame = await sim_camera.capture(200, frame_type=FrameType.DARK, gain=50)
    assert frame.data.dtype == np.uint16
    assert frame.data.shape == (1024, 1280)
    assert frame.headers["FRAME"] == "Dark"  # the driver's own FITS header says so
    assert frame.headers["IMAGETYP"] == "Dark Frame"
    assert frame.headers["GAIN"] == 50
    assert frame.gain == 50
    assert frame.exposure_ms == 200
    assert frame.frame_type is FrameType.DARK
    assert frame.timestamp > 0
    assert frame.temperature_c is not None
    frame_type = sim_camera.client.property(SIMULATOR, "CCD_FRAME_TYPE")
    assert frame_type is not None
    assert frame_type.switch("FRAME_DARK")

    bias = await sim_camera.capture(0, frame_type=FrameType.BIAS)  # raised to the driver's 0.01 s
    assert bias.headers["FRAME"] == "Bias"
    assert bias.exposure_ms == 0


async def test_binning_halves_the_frame(sim_camera: IndiCamera) -> None:
    frame = await sim_camera.capture(100, frame_type=FrameType.DARK, binning=2)
    assert frame.data.shape == (512, 640)
    assert frame.binning == 2
    assert frame.headers["XBINNING"] == 2


async def test_subframes_are_in_binned_pixels(sim_camera: IndiCamera) -> None:
    frame = await sim_camera.capture(100, subframe=Subframe(x=100, y=50, width=256, height=128))
    assert frame.data.shape == (128, 256)
    binned = await sim_camera.capture(
        100, binning=2, subframe=Subframe(x=10, y=20, width=100, height=60)
    )
    assert binned.data.shape == (60, 100)
    indi_frame = sim_camera.client.property(SIMULATOR, "CCD_FRAME")
    assert indi_frame is not None
    assert [indi_frame.number(k) for k in ("X", "Y", "WIDTH", "HEIGHT")] == [20, 40, 200, 120]
    with pytest.raises(CameraError, match="exceeds"):
        await sim_camera.capture(100, subframe=Subframe(x=1200, y=0, width=100, height=10))
    with pytest.raises(CameraError, match="binning 5"):
        await sim_camera.capture(100, binning=5)


async def test_cooler_set_and_read(sim_camera: IndiCamera) -> None:
    # The simulator cools by 0.5 °C a second, so wait for the first step only.
    start = (await sim_camera.cooler_status()).temperature_c
    await sim_camera.set_cooler(True, start - 1.0)
    await sim_camera.client.wait_property(
        SIMULATOR, "CCD_TEMPERATURE",
        lambda p: (p.number("CCD_TEMPERATURE_VALUE") or start) < start,
        timeout_s=10,
    )
    status = await sim_camera.cooler_status()
    assert status.temperature_c < start
    assert status.cooler_on
    assert status.setpoint_c == start - 1.0

    await sim_camera.set_cooler(False)
    await sim_camera.client.wait_property(
        SIMULATOR, "CCD_COOLER", lambda p: p.switch("COOLER_OFF") is True, timeout_s=5
    )
    status = await sim_camera.cooler_status()
    assert not status.cooler_on
    assert status.setpoint_c is None


async def test_cancelling_a_capture_aborts_the_exposure(sim_camera: IndiCamera) -> None:
    client = sim_camera.client

    def aborted(ev: Event) -> bool:
        return isinstance(ev, SetVector) and ev.name == "CCD_ABORT_EXPOSURE"

    with client.watch(aborted, device=SIMULATOR) as abort_seen:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sim_camera.capture, 30_000)
            await client.wait_property(
                SIMULATOR, "CCD_EXPOSURE", lambda p: p.state == "Busy", timeout_s=5
            )
            nursery.cancel_scope.cancel()
        confirmation = await abort_seen.wait(timeout_s=2, what="the driver's abort")
    assert isinstance(confirmation, SetVector)
    assert confirmation.state == "Ok"
    await client.wait_property(SIMULATOR, "CCD_EXPOSURE", lambda p: p.state != "Busy", timeout_s=2)
    frame = await sim_camera.capture(100)  # the camera is usable again at once
    assert frame.data.shape == (1024, 1280)


async def test_unreachable_server_fails_fast(simulator_server: IndiServer) -> None:
    camera = make_camera(simulator_server, SIMULATOR, port=simulator_server.port + 900)
    with pytest.raises(RuntimeError, match=r"nursery\.start\(camera\.run\)"):
        await camera.connect()
    async with trio.open_nursery() as nursery:
        await nursery.start(camera.run)
        with pytest.raises(CameraError, match=r"cannot reach indiserver at 127\.0\.0\.1") as info:
            await camera.connect()
        assert "refused" in info.value.message.lower()
        assert not camera.connected
        with pytest.raises(CameraError, match="not connected"):
            await camera.capture(100)
        nursery.cancel_scope.cancel()


async def test_missing_device_is_named(simulator_server: IndiServer, alerts: Alerts) -> None:
    camera = make_camera(simulator_server, "No Such CCD", alerts, connect_timeout_s=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(camera.run)
        with pytest.raises(CameraError, match="no device 'No Such CCD'") as info:
            await camera.connect()
        assert "CCD Simulator" in info.value.message  # lists what is there
        nursery.cancel_scope.cancel()
    assert alerts.seen == []
