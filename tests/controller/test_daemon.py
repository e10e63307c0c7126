"""The real daemon with a controller profile, driven over JSON-RPC, against the simulated
controller over TCP and over a pty: a dark library and a defect map are built through it, and
every controller fault fails the build with its message while the daemon keeps working and the
library files stay byte for byte what they were."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from phdserver.cameras.controller import ControllerCamera, ControllerSettings, Fault
from phdserver.config import CameraSettings, Config
from phdserver.library import read_defect_map
from tests.controller import HEIGHT, TRANSPORTS, WIDTH, running_controller
from tests.controller.test_faults import FAST_FAILURE
from tests.support import LineClient, make_config, running_server, wait_operation

FAULT_MESSAGES = {
    Fault.SILENT: "did not answer 'expose'",
    Fault.ERROR: "replied ERROR to 'expose'",
    Fault.CMD_ERROR: "(cmd_error): simulated fault",
    Fault.MALFORMED: "malformed reply to 'expose'",
    Fault.DROP: "dropped during 'expose'",
    Fault.NOIMAGE: "no usable image after 'expose'",
}


def controller_config(data_dir: Path, options: dict[str, Any]) -> Config:
    config = make_config(data_dir)
    profile = config.selected_profile.with_camera(
        CameraSettings(type="controller", options=options), name="Controller")
    return config.with_selected_profile(profile)


def factory(settings: CameraSettings) -> ControllerCamera:
    """What the lead's camera factory will do for ``type = "controller"``."""
    return ControllerCamera(ControllerSettings(**settings.options))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def run(client: LineClient, method: str, params: dict[str, Any],
              status: str = "completed") -> dict[str, Any]:
    started = await client.call(method, params)
    finished = await wait_operation(client, started["operation_id"])
    assert finished["Status"] == status, finished
    return finished


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_dark_library_and_defect_map_through_the_controller(
    tmp_path: Path, transport: str
) -> None:
    async with running_controller(tmp_path, transport) as rig:
        config = controller_config(tmp_path / "data", rig.options)
        async with running_server(config, camera_factory=factory) as (app, port):
            client = await LineClient.connect(port)
            await client.call("set_connected", [True])
            assert await client.call("get_camera_frame_size") == [WIDTH, HEIGHT]

            await run(client, "start_dark_library_build",
                      {"min_exposure": 1000, "max_exposure": 2000, "frame_count": 2})
            with fits.open(app.calibration_paths.dark_library) as hdus:
                assert [h.header["EXPOSURE"] for h in hdus] == [1.0, 1.5, 2.0]
                assert all(h.data.shape == (HEIGHT, WIDTH) for h in hdus)
            exposes = [c.split() for c in rig.sim.commands if c.startswith("expose")]
            assert [e[2] for e in exposes] == ["1.000"] * 2 + ["1.500"] * 2 + ["2.000"] * 2
            assert {e[1] for e in exposes} == {"False"}  # darks: shutter closed

            await run(client, "start_defect_map_build",
                      {"exposure_time": 2000, "frame_count": 5})
            paths = app.calibration_paths
            assert fits.getdata(paths.defect_master).shape == (HEIGHT, WIDTH)
            defects = read_defect_map(paths.defect_map)
            # The simulated sensor's saturating hot pixels are in the map.
            found = {tuple(p) for p in np.asarray(defects.pixels).tolist()}
            sensor = rig.sim.sensor
            strong = {tuple(p) for p in sensor.strong_hot_pixels(2.0, 15.0).tolist()}
            assert strong
            assert strong <= found
            assert await client.call("get_app_state") == "Stopped"
            await client.call("set_connected", [False])
            await client.aclose()


@pytest.mark.parametrize("fault", list(Fault), ids=lambda f: f.value)
async def test_a_controller_fault_fails_the_build_and_changes_nothing(
    tmp_path: Path, fault: Fault
) -> None:
    async with running_controller(tmp_path) as rig:
        config = controller_config(tmp_path / "data", {**rig.options, **FAST_FAILURE})
        async with running_server(config, camera_factory=factory) as (app, port):
            client = await LineClient.connect(port)
            await client.call("set_connected", [True])
            await run(client, "start_dark_library_build", {"exposures": [1000], "frame_count": 1})
            path = app.calibration_paths.dark_library
            before = digest(path)

            rig.sim.fault = fault
            finished = await run(client, "start_dark_library_build",
                                 {"exposures": [1000, 2000], "frame_count": 2}, "failed")
            assert FAULT_MESSAGES[fault] in finished["Error"]
            assert finished["Error"].startswith("Controller: ")
            assert digest(path) == before
            assert await client.call("get_app_state") == "Stopped"
            assert await client.call("get_camera_frame_size") == [WIDTH, HEIGHT]

            rig.sim.fault = None
            await run(client, "start_dark_library_build", {"exposures": [1500], "frame_count": 1})
            assert digest(path) != before
            await client.aclose()


async def test_a_failed_defect_map_build_keeps_the_old_map(tmp_path: Path) -> None:
    async with running_controller(tmp_path, "serial") as rig:
        config = controller_config(tmp_path / "data", {**rig.options, **FAST_FAILURE})
        async with running_server(config, camera_factory=factory) as (app, port):
            client = await LineClient.connect(port)
            await client.call("set_connected", [True])
            await run(client, "start_defect_map_build", {"exposure_time": 1000, "frame_count": 5})
            files = [app.calibration_paths.defect_map, app.calibration_paths.defect_master,
                     app.calibration_paths.defect_filtered]
            before = [digest(f) for f in files]
            rig.sim.fault = Fault.DROP
            finished = await run(client, "start_defect_map_build",
                                 {"exposure_time": 1000, "frame_count": 5}, "failed")
            assert "dropped during 'expose'" in finished["Error"]
            assert [digest(f) for f in files] == before
            assert await client.call("get_app_state") == "Stopped"
            await client.aclose()
