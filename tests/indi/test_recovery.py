"""Server killed and driver crashed in the middle of an exposure: a clear error, then recovery."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio

from phdserver.cameras.base import FrameType
from phdserver.cameras.indi import IndiCamera
from phdserver.errors import CameraError
from tests.indi.conftest import SIMULATOR, Alerts, make_camera
from tests.indi.drivers.indiserver import IndiServer

pytestmark = pytest.mark.indi


async def failure_during_exposure(
    camera: IndiCamera, break_it: Callable[[], Awaitable[None]]
) -> CameraError:
    """Start a long capture, break something once the driver is exposing, return the error."""
    errors: list[CameraError] = []
    done = trio.Event()

    async def capture() -> None:
        try:
            await camera.capture(30_000, frame_type=FrameType.DARK)
        except CameraError as exc:
            errors.append(exc)
        finally:
            done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(capture)
        await camera.client.wait_property(
            SIMULATOR, "CCD_EXPOSURE", lambda p: p.state == "Busy", timeout_s=5
        )
        await break_it()
        with trio.fail_after(3):  # a generous bound: the failure is immediate
            await done.wait()
    assert errors, "the capture should have failed"
    return errors[0]


async def test_server_killed_mid_exposure_then_restarted(
    own_simulator_server: IndiServer, alerts: Alerts
) -> None:
    server = own_simulator_server
    camera = make_camera(server, SIMULATOR, alerts)
    async with trio.open_nursery() as nursery:
        await nursery.start(camera.run)
        await camera.connect()

        error = await failure_during_exposure(camera, lambda: trio.to_thread.run_sync(server.kill))
        assert error.message.startswith("INDI: connection to indiserver at 127.0.0.1:")
        assert "lost" in error.message
        assert not camera.connected
        message, severity = await alerts.wait_for("lost")
        assert severity == "warning"
        with pytest.raises(CameraError, match="not connected"):
            await camera.capture(100)

        await trio.to_thread.run_sync(lambda: server.start(device=SIMULATOR))
        message, severity = await alerts.wait_for("reconnected")
        assert (message, severity) == ("INDI: reconnected to 'CCD Simulator'", "info")
        assert camera.connected
        frame = await camera.capture(100, frame_type=FrameType.DARK)
        assert frame.data.shape == (1024, 1280)
        assert frame.headers["FRAME"] == "Dark"
        nursery.cancel_scope.cancel()


async def test_driver_crash_mid_exposure_then_driver_restart(
    own_simulator_server: IndiServer, alerts: Alerts
) -> None:
    camera = make_camera(own_simulator_server, SIMULATOR, alerts)
    async with trio.open_nursery() as nursery:
        await nursery.start(camera.run)
        await camera.connect()

        async def crash() -> None:
            await camera.client.send_new_switch(SIMULATOR, "CCD_SIMULATE_CRASH", {"CRASH": True})

        error = await failure_during_exposure(camera, crash)
        assert error.message == (
            "INDI: device 'CCD Simulator' disappeared (driver crashed or restarted?)"
        )
        await alerts.wait_for("disappeared")
        # indiserver restarts the driver, which comes back disconnected; the camera re-arms it
        _message, severity = await alerts.wait_for("reconnected")
        assert severity == "info"
        connection = camera.client.property(SIMULATOR, "CONNECTION")
        assert connection is not None
        assert connection.switch("CONNECT")
        frame = await camera.capture(100, frame_type=FrameType.DARK)
        assert frame.data.shape == (1024, 1280)
        nursery.cancel_scope.cancel()


async def test_disconnect_by_another_client_is_reported_not_fought(
    own_simulator_server: IndiServer, alerts: Alerts
) -> None:
    camera = make_camera(own_simulator_server, SIMULATOR, alerts)
    async with trio.open_nursery() as nursery:
        await nursery.start(camera.run)
        await camera.connect()
        await camera.client.send_new_switch(SIMULATOR, "CONNECTION", {"DISCONNECT": True})
        _message, severity = await alerts.wait_for("disconnected by another INDI client")
        assert severity == "warning"
        assert not camera.connected
        await camera.connect()  # an explicit connect arms it again
        assert camera.connected
        await camera.disconnect()
        await camera.disconnect()  # idempotent
        assert not camera.connected
        nursery.cancel_scope.cancel()


async def test_an_image_that_never_comes_times_out(
    own_simulator_server: IndiServer, alerts: Alerts
) -> None:
    camera = make_camera(own_simulator_server, SIMULATOR, alerts, timeout_s=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(camera.run)
        await camera.connect()
        # another client tells the driver to keep images on its own disk: no BLOB will come
        client = camera.client
        await client.send_new_switch(SIMULATOR, "UPLOAD_MODE", {"UPLOAD_LOCAL": True})
        await client.wait_property(
            SIMULATOR, "UPLOAD_MODE", lambda p: p.switch("UPLOAD_LOCAL") is True, timeout_s=5
        )
        with pytest.raises(CameraError, match=r"timed out after 0\.6 s waiting for the image"):
            await camera.capture(100)
        assert camera.connected  # a slow camera is not a lost one
        nursery.cancel_scope.cancel()
