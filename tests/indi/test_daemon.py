"""The whole daemon with an INDI camera profile, driven over JSON-RPC like any client would:
connect, size, loop, single frame, dark library and defect map against Debian's real
indiserver; the server killed and the driver crashed mid-build; our hot-pixel driver's defects.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from astropy.io import fits

from phdserver.app import App
from phdserver.cameras.indi import IndiCamera, IndiSettings
from phdserver.config import CameraSettings, Config, Profile, ServerSettings
from phdserver.library import read_defect_map
from tests.indi.conftest import HOTPIXEL, SIMULATOR
from tests.indi.drivers import hotpixel_camera
from tests.indi.drivers.indiserver import IndiServer
from tests.support import LineClient, running_server, wait_operation

pytestmark = pytest.mark.indi


@asynccontextmanager
async def indi_daemon(server: IndiServer, device: str,
                      data_dir: Path) -> AsyncIterator[tuple[App, LineClient]]:
    """A daemon whose profile is an INDI camera reached inside the private namespace."""
    options: dict[str, Any] = {"host": "127.0.0.1", "port": server.port, "device": device,
                               "timeout_s": 10.0, "connect_timeout_s": 10.0}
    profile = Profile(id=1, name=f"INDI {device}", camera=CameraSettings(type="indi",
                                                                         options=options))
    config = Config(server=ServerSettings(port=0), profiles=(profile,), data_dir=data_dir,
                    log_level="warning")
    alerts: list[App] = []

    def factory(settings: CameraSettings) -> IndiCamera:
        return IndiCamera(IndiSettings(**settings.options),
                          on_alert=lambda message, kind: alerts[0].alert(message, kind),
                          open_stream=server.net.open_stream)

    async with running_server(config, camera_factory=factory) as (app, port):
        alerts.append(app)
        client = await LineClient.connect(port)
        try:
            yield app, client
        finally:
            await client.aclose()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_simulator_through_the_daemon(simulator_server: IndiServer,
                                            tmp_path: Path) -> None:
    async with indi_daemon(simulator_server, SIMULATOR, tmp_path) as (app, client):
        assert await client.call("set_connected", [True]) == 0
        assert await client.call("get_connected") is True
        assert await client.call("get_camera_frame_size") == [1280, 1024]
        equipment = await client.call("get_current_equipment")
        assert equipment["camera"]["connected"] is True
        await client.call("set_exposure", [100])
        await client.call("loop")
        first = await client.wait_event("LoopingExposures")
        second = await client.wait_event("LoopingExposures")
        assert second["Frame"] == first["Frame"] + 1
        await client.call("stop_capture")
        await client.wait_event("LoopingExposuresStopped")
        assert await client.call("capture_single_frame", {"exposure": 100}) == 0
        assert (await client.wait_event("SingleFrameComplete"))["Success"] is True

        started = await client.call("start_dark_library_build",
                                    {"exposures": [100, 200], "frame_count": 2})
        finished = await wait_operation(client, started["operation_id"], timeout=60)
        assert finished["Status"] == "completed", finished
        with fits.open(app.calibration_paths.dark_library) as hdus:
            assert [h.data.shape for h in hdus] == [(1024, 1280)] * 2
            assert [h.header["EXPOSURE"] for h in hdus] == [0.1, 0.2]

        started = await client.call("start_defect_map_build",
                                    {"exposure_time": 1000, "frame_count": 5})
        finished = await wait_operation(client, started["operation_id"], timeout=60)
        assert finished["Status"] == "completed", finished
        with fits.open(app.calibration_paths.defect_master) as hdus:
            assert hdus[0].data.shape == (1024, 1280)


async def start_long_build(client: LineClient) -> int:
    started = await client.call("start_dark_library_build",
                                {"exposures": [1000, 30000], "frame_count": 3})
    op_id = started["operation_id"]
    await client.wait_event("OperationProgress",
                            lambda e: e["OperationId"] == op_id and "Capturing dark" in
                            e["Message"] and "30 s" in e["Message"], timeout=30)
    return op_id


@pytest.mark.parametrize("breakage", ["server_killed", "driver_crash"])
async def test_failures_mid_build_then_recovery(own_simulator_server: IndiServer,
                                                tmp_path: Path, breakage: str) -> None:
    server = own_simulator_server
    async with indi_daemon(server, SIMULATOR, tmp_path) as (app, client):
        await client.call("set_connected", [True])
        started = await client.call("start_dark_library_build",
                                    {"exposures": [100], "frame_count": 1})
        assert (await wait_operation(client, started["operation_id"], 30))["Status"] == \
            "completed"
        path = app.calibration_paths.dark_library
        before = digest(path)

        op_id = await start_long_build(client)
        if breakage == "server_killed":
            await trio.to_thread.run_sync(server.kill)
        else:
            camera = app.equipment.camera
            assert isinstance(camera, IndiCamera)
            await camera.client.send_new_switch(SIMULATOR, "CCD_SIMULATE_CRASH",
                                                {"CRASH": True})
        finished = await wait_operation(client, op_id, timeout=5)
        assert finished["Status"] == "failed"
        assert "INDI" in finished["Error"]
        if breakage == "server_killed":
            assert "lost" in finished["Error"]
        else:
            assert "'CCD Simulator'" in finished["Error"]
        assert digest(path) == before
        assert await client.call("get_app_state") == "Stopped"
        alert = await client.wait_event("Alert", timeout=10)
        assert "INDI" in alert["Msg"]

        if breakage == "server_killed":
            await trio.to_thread.run_sync(lambda: server.start(device=SIMULATOR))
        await client.wait_event("Alert", lambda e: "reconnected" in e["Msg"], timeout=30)
        assert await client.call("set_connected", [True]) == 0
        started = await client.call("start_dark_library_build",
                                    {"exposures": [100, 200], "frame_count": 1})
        finished = await wait_operation(client, started["operation_id"], timeout=60)
        assert finished["Status"] == "completed", finished
        assert digest(path) != before


async def test_defect_map_from_our_driver_finds_the_planted_pixels(
    hotpixel_server: IndiServer, tmp_path: Path
) -> None:
    async with indi_daemon(hotpixel_server, HOTPIXEL, tmp_path) as (app, client):
        await client.call("set_connected", [True])
        started = await client.call("start_defect_map_build",
                                    {"exposure_time": 1000, "frame_count": 5})
        finished = await wait_operation(client, started["operation_id"], timeout=60)
        assert finished["Status"] == "completed", finished
        listed = {tuple(p) for p in
                  read_defect_map(app.calibration_paths.defect_map).pixels.tolist()}
        planted = {(x, y) for y, x, _rate in hotpixel_camera.HOT_PIXELS}
        assert planted <= listed
