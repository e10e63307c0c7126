"""Defect-map builds over raw JSON-RPC: PHD2's files, PHD2's algorithm, the planted truth."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from astropy.io import fits

from phdserver.app import App
from phdserver.imaging.median_filter import reference_median_filter
from phdserver.library import read_defect_map
from tests.support import LineClient, make_config, running_server, wait_operation

STAGES = ["starting", "capturing_darks", "building_master_dark", "building_filtered_dark",
          "analyzing_defects", "saving_map", "completed"]


def phd2_selection(master: np.ndarray, filtered: np.ndarray, hot: int,
                   cold: int) -> list[tuple[int, int]]:
    """PHD2's rule, written out plainly (keeping pixels that share a deviation)."""
    values = master.astype(np.int64)
    n = values.size
    mean = values.sum() / n
    stdev = float(np.sqrt(((values - mean) ** 2).sum() / n))
    base = int(0.125 * stdev)
    cold_t = int(2 ** (3 - 0.06 * cold) * stdev)
    hot_t = int(2 ** (3 - 0.06 * hot) * stdev)
    hot_px: list[tuple[int, int, int]] = []
    cold_px: list[tuple[int, int, int]] = []
    height, width = master.shape
    for y in range(height):
        for x in range(width):
            v = int(master[y, x]) - int(filtered[y, x])
            if v > base:
                if v >= hot_t:
                    hot_px.append((v, x, y))
            elif -v > base and -v >= cold_t:
                cold_px.append((-v, x, y))
    cold_px.sort(key=lambda t: t[0])
    hot_px.sort(key=lambda t: t[0])
    return [(x, y) for _, x, y in cold_px] + [(x, y) for _, x, y in hot_px]


async def test_defect_map_build(tmp_path: Path) -> None:
    config = make_config(tmp_path, width=160, height=120, time_scale=0.0005)
    async with running_server(config) as (app, port):
        client = await LineClient.connect(port)
        watcher = await LineClient.connect(port)
        await client.call("set_connected", [True])
        result = await client.call("start_defect_map_build",
                                   {"exposure_time": 5000, "frame_count": 5})
        op_id = result["operation_id"]
        assert result == {"operation_id": op_id, "exposure_time": 5000, "frame_count": 5,
                          "hot_aggressiveness": 75, "cold_aggressiveness": 75}
        statuses: list[str] = []
        while not statuses or statuses[-1] != "completed":
            event = await watcher.wait_event("OperationProgress",
                                             lambda e: e["OperationId"] == op_id)
            if not statuses or statuses[-1] != event["Status"]:
                statuses.append(event["Status"])
        assert statuses == STAGES
        status = await client.call("get_defect_map_build_status", {"operation_id": op_id})
        assert status["status"] == "completed"
        assert status["frames_captured"] == 5
        assert status["total_frames"] == 5

        paths = app.calibration_paths
        with fits.open(paths.defect_master) as hdus:
            master = hdus[0].data.astype(np.uint16)
            assert hdus[0].header["EXPOSURE"] == 5.0
            assert hdus[0].header["STACKCNT"] == 5
        with fits.open(paths.defect_filtered) as hdus:
            filtered = hdus[0].data.astype(np.uint16)
        assert np.array_equal(filtered, reference_median_filter(master, 15))

        contents = read_defect_map(paths.defect_map)
        listed = [tuple(p) for p in contents.pixels.tolist()]
        assert listed == phd2_selection(master, filtered, 75, 75)
        assert status["defect_count"] == len(listed)
        text = paths.defect_map.read_text()
        assert text.startswith("# PHD2 Defect Map v1\n")
        assert f"# Defect count: {len(listed)}\n" in text

        camera = app.equipment.camera
        loaded = await client.call("get_defect_map_status")
        assert loaded["loaded"] is True
        assert loaded["pixel_count"] == len(listed)
        assert (await client.call("get_dark_library_status"))["loaded"] is False

        # Refining re-selects from the saved darks without capturing.
        before_master = hashlib.sha256(paths.defect_master.read_bytes()).hexdigest()
        frames_before = camera.frames_taken
        refined = await client.call("refine_defect_map",
                                    {"hot_aggressiveness": 30, "cold_aggressiveness": 30})
        assert camera.frames_taken == frames_before
        assert refined["defect_count"] < len(listed)
        again = [tuple(p) for p in read_defect_map(paths.defect_map).pixels.tolist()]
        assert again == phd2_selection(master, filtered, 30, 30)
        assert hashlib.sha256(paths.defect_master.read_bytes()).hexdigest() == before_master
        await client.aclose()
        await watcher.aclose()


async def test_cancelled_defect_build_leaves_files_identical(tmp_path: Path) -> None:
    config = make_config(tmp_path, width=160, height=120, time_scale=0.0005)
    async with running_server(config) as (app, port):
        client = await LineClient.connect(port)
        await client.call("set_connected", [True])
        first = await client.call("start_defect_map_build", {"exposure_time": 1000,
                                                             "frame_count": 5})
        assert (await wait_operation(client, first["operation_id"]))["Status"] == "completed"
        paths = app.calibration_paths
        files = (paths.defect_map, paths.defect_master, paths.defect_filtered)
        before = [f.read_bytes() for f in files]
        app.equipment.camera.settings = _slow(app)
        second = await client.call("start_defect_map_build", {"exposure_time": 300000,
                                                              "frame_count": 100})
        await client.wait_event("OperationProgress",
                                lambda e: e["OperationId"] == second["operation_id"]
                                and e["Status"] == "capturing_darks")
        reply = await client.call("cancel_defect_map_build",
                                  {"operation_id": second["operation_id"]})
        assert reply["status"] == "cancelled"
        assert [f.read_bytes() for f in files] == before
        assert not list(paths.directory.glob(".*"))
        await client.aclose()


async def test_strong_hot_pixels_of_a_full_size_sensor_are_all_found(tmp_path: Path) -> None:
    """At the simulator's default 1280x960, every planted hot pixel whose excess is far above
    the noise (the sensor model's "strong" ones) is in the map."""
    config = make_config(tmp_path, width=1280, height=960, time_scale=0.0005)
    async with running_server(config) as (app, port):
        client = await LineClient.connect(port)
        await client.call("set_connected", [True])
        result = await client.call("start_defect_map_build",
                                   {"exposure_time": 5000, "frame_count": 5})
        assert (await wait_operation(client, result["operation_id"]))["Status"] == "completed"
        listed = {tuple(p) for p in read_defect_map(app.calibration_paths.defect_map)
                  .pixels.tolist()}
        camera = app.equipment.camera
        temperature = (await camera.cooler_status()).temperature_c
        strong = {tuple(p) for p in
                  camera.sensor.strong_hot_pixels(5.0, temperature, gain=95).tolist()}
        assert len(strong) > 100
        assert strong <= listed
        cold = {tuple(p) for p in camera.sensor.cold_pixels.tolist()}
        assert cold <= listed
        await client.aclose()


def _slow(app: App):  # type: ignore[no-untyped-def]
    import dataclasses

    camera = app.equipment.camera
    return dataclasses.replace(camera.settings, time_scale=1.0)


async def test_invalid_defect_params(client: LineClient) -> None:
    await client.call("set_connected", [True])
    for params, name in (({"exposure_time": 999}, "exposure_time"),
                         ({"frame_count": 4}, "frame_count"),
                         ({"hot_aggressiveness": 101}, "hot_aggressiveness"),
                         ({"cold_aggressiveness": -1}, "cold_aggressiveness")):
        error = await client.error("start_defect_map_build", params)
        assert error["code"] == -32602
        assert name in error["message"]
    error = await client.error("refine_defect_map", {})
    assert error["code"] == 1
