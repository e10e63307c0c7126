"""Dark-library builds over raw JSON-RPC, against the simulator, end to end."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from astropy.io import fits

from phdserver.app import App
from tests.support import LineClient, make_config, running_server, wait_operation

STAGES = ["starting", "capturing_darks", "building_master_darks", "saving_library", "completed"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def build(client: LineClient, **params: object) -> dict:
    result = await client.call("start_dark_library_build", params)
    finished = await wait_operation(client, result["operation_id"])
    assert finished["Status"] == "completed", finished
    return result


async def test_build_goes_through_its_stages_and_writes_phd2_layout(
    server: tuple[App, int], client: LineClient
) -> None:
    app, port = server
    watcher = await LineClient.connect(port)
    await client.call("set_connected", [True])
    result = await client.call("start_dark_library_build",
                               {"min_exposure": 1000, "max_exposure": 2000, "frame_count": 3,
                                "notes": "test library"})
    op_id = result["operation_id"]
    assert result == {"operation_id": op_id, "min_exposure": 1000, "max_exposure": 2000,
                      "frame_count": 3, "modify_existing": False, "total_exposures": 3,
                      "exposures": [1000, 1500, 2000], "combine": "mean"}
    # Meanwhile a second camera operation is refused with code 1, naming the holder.
    error = await client.error("start_defect_map_build", {"exposure_time": 1000})
    assert error["code"] == 1
    assert f"operation {op_id}" in error["message"]
    error = await client.error("loop")
    assert error["code"] == 1

    statuses: list[str] = []
    progress: list[float] = []
    while True:
        event = await watcher.wait_event("OperationProgress", lambda e: e["OperationId"] == op_id)
        if not statuses or statuses[-1] != event["Status"]:
            statuses.append(event["Status"])
        progress.append(event["Progress"])
        if event["Status"] == "completed":
            break
    assert statuses == STAGES
    assert progress == sorted(progress)
    assert progress[-1] == 100
    assert all(p < 100 for p in progress[:-1])
    finished = await watcher.wait_event("OperationFinished")
    assert finished == {**{k: finished[k] for k in ("Event", "Timestamp", "Host", "Inst")},
                        "OperationId": op_id, "Kind": "dark_library", "Status": "completed"}

    status = await client.call("get_dark_library_status", {"operation_id": op_id})
    assert status["status"] == "completed"
    assert status["progress"] == 100
    assert status["total_frames"] == 9
    assert status["total_exposures"] == 3

    path = app.data_dir / "darks_defects" / "PHD2_dark_lib_1.fit"
    with fits.open(path) as hdus:
        assert len(hdus) == 3
        assert isinstance(hdus[0], fits.PrimaryHDU)
        exposures = [h.header["EXPOSURE"] for h in hdus]
        assert exposures == [1.0, 1.5, 2.0]
        for hdu in hdus:
            header = hdu.header
            assert header["BITPIX"] == 16
            assert header["BZERO"] == 32768
            assert header["XBINNING"] == 1
            assert header["SATURATE"] == 65535
            assert header["GAIN"] == 95
            assert header["USERNOTE"] == "test library"
            assert hdu.data.shape == (240, 320)
            assert hdu.data.dtype.kind == "u"
    summary = await client.call("get_dark_library_status")
    assert summary["loaded"] is True
    assert summary["frame_count"] == 3
    assert summary["min_exposure"] == 1000
    assert summary["max_exposure"] == 2000
    assert summary["building"] is False
    assert summary["compatible"] is True
    await watcher.aclose()


async def test_master_dark_is_phd2_integer_mean_of_the_frames(tmp_path: Path) -> None:
    """The mean master equals sum // n of the very frames the camera produced."""
    config = make_config(tmp_path)
    async with running_server(config) as (app, port):
        client = await LineClient.connect(port)
        await client.call("set_connected", [True])
        camera = app.equipment.camera
        frames: list[np.ndarray] = []
        original = camera.capture

        async def recording_capture(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            frame = await original(*args, **kwargs)
            frames.append(frame.data.copy())
            return frame

        camera.capture = recording_capture  # type: ignore[method-assign]
        await build(client, exposures=[1000], frame_count=4)
        with fits.open(app.calibration_paths.dark_library) as hdus:
            master = hdus[0].data
        expected = (np.sum(np.stack(frames).astype(np.uint32), axis=0) // 4).astype(np.uint16)
        assert np.array_equal(master, expected)
        await client.aclose()


@pytest.mark.parametrize("combine", ["median", "minmax_mean", "sigma_clip"])
async def test_other_combine_modes(client: LineClient, server: tuple[App, int],
                                   combine: str) -> None:
    app, _ = server
    await client.call("set_connected", [True])
    await build(client, exposures=[1000, 2000], frame_count=5, combine=combine)
    with fits.open(app.calibration_paths.dark_library) as hdus:
        assert [h.header["EXPOSURE"] for h in hdus] == [1.0, 2.0]
        assert hdus[0].header["COMBMETH"] == combine
    assert not list((app.data_dir / "spool").glob(".spool-*"))


async def test_cancel_ends_quickly_and_leaves_the_file_identical(
    tmp_path: Path
) -> None:
    config = make_config(tmp_path, time_scale=0.05)
    async with running_server(config) as (app, port):
        client = await LineClient.connect(port)
        await client.call("set_connected", [True])
        await build(client, exposures=[1000], frame_count=1)
        path = app.calibration_paths.dark_library
        before = digest(path)
        result = await client.call("start_dark_library_build",
                                   {"min_exposure": 1000, "max_exposure": 15000,
                                    "frame_count": 10})
        op_id = result["operation_id"]
        await client.wait_event("OperationProgress", lambda e: "Capturing dark" in e["Message"])
        reply = await client.call("cancel_dark_library_build", {"operation_id": op_id})
        assert reply == {"operation_id": op_id, "cancelled": True, "status": "cancelled"}
        status = await client.call("get_dark_library_status", {"operation_id": op_id})
        assert status["status"] == "cancelled"
        assert digest(path) == before
        again = await client.call("cancel_dark_library_build", {"operation_id": op_id})
        assert again == {"operation_id": op_id, "cancelled": False, "status": "cancelled"}
        # The camera is free again.
        await build(client, exposures=[1000], frame_count=1)
        await client.aclose()


async def test_a_failed_build_changes_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path, fail_after_frames=3)
    async with running_server(config) as (app, port):
        client = await LineClient.connect(port)
        await client.call("set_connected", [True])
        await build(client, exposures=[1000], frame_count=2)
        path = app.calibration_paths.dark_library
        before = digest(path)
        result = await client.call("start_dark_library_build",
                                   {"exposures": [1000, 2000], "frame_count": 2})
        finished = await wait_operation(client, result["operation_id"])
        assert finished["Status"] == "failed"
        assert "injected failure" in finished["Error"]
        status = await client.call("get_dark_library_status",
                                   {"operation_id": result["operation_id"]})
        assert status["status"] == "failed"
        assert "injected failure" in status["error"]
        assert digest(path) == before
        assert await client.call("get_app_state") == "Stopped"
        await client.aclose()


async def test_modify_existing_merges(client: LineClient, server: tuple[App, int]) -> None:
    app, _ = server
    await client.call("set_connected", [True])
    await build(client, exposures=[1000, 2000], frame_count=1)
    await build(client, exposures=[2000, 3000], frame_count=1, modify_existing=True,
                notes="merged")
    with fits.open(app.calibration_paths.dark_library) as hdus:
        assert [h.header["EXPOSURE"] for h in hdus] == [1.0, 2.0, 3.0]
    await build(client, exposures=[500], frame_count=1)
    with fits.open(app.calibration_paths.dark_library) as hdus:
        assert [h.header["EXPOSURE"] for h in hdus] == [0.5]


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"min_exposure": 5000, "max_exposure": 2000}, "min_exposure"),
        ({"frame_count": 0}, "frame_count"),
        ({"frame_count": "3"}, "frame_count"),
        ({"frame_count": True}, "frame_count"),
        ({"frame_count": 101}, "frame_count"),
        ({"notes": "x" * 66}, "notes"),
        ({"notes": "café"}, "notes"),
        ({"combine": "average"}, "combine"),
        ({"exposures": []}, "exposures"),
        ({"exposures": [1000, "x"]}, "exposures"),
        ({"min_exposure": 16000, "max_exposure": 20000}, "min_exposure"),
    ],
)
async def test_invalid_params_name_the_parameter(client: LineClient, params: dict,
                                                 name: str) -> None:
    await client.call("set_connected", [True])
    error = await client.error("start_dark_library_build", params)
    assert error["code"] == -32602
    assert name in error["message"]


async def test_unknown_operation_id(client: LineClient) -> None:
    for method in ("get_dark_library_status", "cancel_dark_library_build", "get_operation",
                   "cancel_operation", "get_defect_map_build_status"):
        error = await client.error(method, {"operation_id": 4242})
        assert error["code"] == -32602
        assert "operation_id" in error["message"]


async def test_refused_while_disconnected_or_looping(client: LineClient) -> None:
    error = await client.error("start_dark_library_build", {})
    assert error == {"code": 1, "message": "camera not connected"}
    await client.call("set_connected", [True])
    await client.call("loop")
    await client.wait_event("LoopingExposures")
    error = await client.error("start_dark_library_build", {})
    assert error["code"] == 1
    assert "looping" in error["message"]
    await client.call("stop_capture")
    await client.wait_event("LoopingExposuresStopped")


async def test_operation_ids_survive_a_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_server(config) as (_, port):
        client = await LineClient.connect(port)
        await client.call("set_connected", [True])
        first = await build(client, exposures=[1000], frame_count=1)
        await client.aclose()
    async with running_server(config) as (_, port):
        client = await LineClient.connect(port)
        await client.call("set_connected", [True])
        old = await client.call("get_operation", {"operation_id": first["operation_id"]})
        assert old["status"] == "completed"
        second = await build(client, exposures=[1000], frame_count=1)
        assert second["operation_id"] > first["operation_id"]
        listed = await client.call("list_operations")
        assert [o["operation_id"] for o in listed] == [first["operation_id"],
                                                       second["operation_id"]]
        await client.aclose()


async def test_load_and_clear(client: LineClient, server: tuple[App, int]) -> None:
    await client.call("set_connected", [True])
    error = await client.error("load_dark_library")
    assert error["code"] == 1
    await build(client, exposures=[1000], frame_count=1)
    assert await client.call("clear_dark_library") == 0
    assert (await client.call("get_dark_library_status"))["loaded"] is False
    status = await client.call("load_dark_library")
    assert status["loaded"] is True


async def test_built_files_are_indexed_as_masters(client: LineClient,
                                                  server: tuple[App, int]) -> None:
    from phdserver.library import MastersDB

    app, _ = server
    await client.call("set_connected", [True])
    await build(client, exposures=[1000, 2000], frame_count=1)
    started = await client.call("start_defect_map_build", {"exposure_time": 1000,
                                                           "frame_count": 5})
    assert (await wait_operation(client, started["operation_id"]))["Status"] == "completed"
    with MastersDB.in_data_dir(app.data_dir) as db:
        records = db.list_masters()
    darks = [r for r in records if r.path == app.calibration_paths.dark_library]
    assert sorted(r.hdu for r in darks) == [0, 1]
    assert [r for r in records if r.path == app.calibration_paths.defect_map]


class RenderStarts:
    """Tells a test when the simulator starts rendering a frame (in its worker thread).

    With very short exposures a looping frame is in flight mostly while it renders (tens of ms
    at 2048²); a test that sends ``stop_capture`` once a render has started meets that window
    every time, whatever the transport's timing.
    """

    def __init__(self, app: App) -> None:
        camera = app.equipment.camera
        sensor = camera.sensor  # type: ignore[attr-defined]
        render = sensor.render
        token = trio.lowlevel.current_trio_token()
        self.started = trio.Event()

        def announced(*args: Any, **kwargs: Any) -> Any:
            token.run_sync_soon(lambda: self.started.set())
            return render(*args, **kwargs)

        sensor.render = announced

    async def next(self) -> None:
        """Wait for the next render to start."""
        self.started = trio.Event()
        await self.started.wait()


async def looping_renders(app: App, client: LineClient) -> RenderStarts:
    """Connect the camera with exposures so short that a looping frame is in flight mostly
    while it renders; watch the renders."""
    await client.call("set_connected", [True])
    await client.call("set_exposure", [10])  # 10 µs at this time scale: frames are renders
    return RenderStarts(app)


async def stop_capture_mid_frame(app: App, client: LineClient, renders: RenderStarts) -> None:
    """Start looping, and send ``stop_capture`` once a frame is being rendered."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(renders.next)
        await client.call("loop")
    await client.call("stop_capture")
    assert app.capture.looping  # the frame in flight is not let go of yet


async def test_a_build_right_after_stop_capture_is_not_refused(tmp_path: Path) -> None:
    """``stop_capture`` replies at once, as PHD2's does, while the frame in flight is still
    being rendered (2048² here: tens of ms in a worker thread). A build started right after the
    reply waits for looping to let go of the camera instead of being refused with "looping
    exposures is using it" (seen in a soak run, 3 times in ~900 stop/start pairs)."""
    async with running_server(make_config(tmp_path, width=2048, height=2048)) as (app, port):
        client = await LineClient.connect(port)
        renders = await looping_renders(app, client)
        for _ in range(3):
            await stop_capture_mid_frame(app, client, renders)
            started = await client.call("start_dark_library_build",
                                        {"exposures": [1000], "frame_count": 1})
            ended = await client.call("cancel_dark_library_build",
                                      {"operation_id": started["operation_id"]})
            assert ended["status"] in ("cancelled", "completed"), ended
            await client.wait_event("LoopingExposuresStopped")


async def test_a_single_frame_right_after_stop_capture_is_not_refused(tmp_path: Path) -> None:
    """As for builds: ``capture_single_frame`` sent right after ``stop_capture`` waits for the
    frame in flight instead of failing with "capture is currently active"."""
    async with running_server(make_config(tmp_path, width=2048, height=2048)) as (app, port):
        client = await LineClient.connect(port)
        renders = await looping_renders(app, client)
        for _ in range(3):
            await stop_capture_mid_frame(app, client, renders)
            assert await client.call("capture_single_frame") == 0
            done = await client.wait_event("SingleFrameComplete")
            assert done["Success"] is True, done
