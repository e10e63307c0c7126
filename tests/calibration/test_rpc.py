"""The calibration library over JSON-RPC, end to end: a real daemon on loopback, synthetic FITS.

Batches here use ``workers: 1`` (one worker thread, no process start-up); the process pool is
exercised end to end by the CLI test.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

import phdserver.pipeline.calibration_batch as calibration_batch
from phdserver.operations import Kind
from phdserver.operations.lifecycle import statuses
from phdserver.pipeline.calibration_batch import FrameOutcome, FrameTask
from tests.calibration import (
    SHAPE,
    Scene,
    assert_distractors_rejected,
    make_scene,
    rig,
    sha256,
    snapshot,
    write_fits,
)
from tests.protocol.test_catalogue import (
    METHODS_DOC,
    assert_documented_error,
    call_checked,
)
from tests.support import LineClient, make_config, running_server, wait_operation


def expected_output(scene: Scene, light: Path) -> np.ndarray:
    flat = scene.master_array("flat_ha")
    return (scene.light_data[light].astype(np.float64) - scene.master_array("dark300")) / (
        flat / np.median(flat))


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    actual = actual.astype(np.float64)
    assert np.all(np.abs(actual - expected) <= 1e-4 * np.maximum(np.abs(expected), 1.0))


async def calibrate(client: LineClient, **params: Any) -> dict[str, Any]:
    started = await call_checked(client, "start_light_calibration", params)
    finished = await wait_operation(client, started["operation_id"])
    assert finished["Kind"] == "light_calibration"
    return await call_checked(client, "get_light_calibration_status",
                              {"operation_id": started["operation_id"]})


def test_the_catalogue_documents_the_calibration_statuses() -> None:
    schema = METHODS_DOC["components"]["schemas"]["LightCalibrationStatus"]
    assert schema["properties"]["status"]["enum"] == list(statuses(Kind.LIGHT_CALIBRATION))


async def test_import_list_match_calibrate_rerun_and_dry_run(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "night")
    originals = snapshot(scene.root)
    out_dir = tmp_path / "calibrated"
    async with running_server(make_config(tmp_path / "data")) as (app, port):
        client = await LineClient.connect(port)
        assert await call_checked(client, "list_calibration_masters") == []
        imported = await call_checked(client, "import_calibration_masters",
                                     {"paths": [str(scene.root / "masters")]})
        assert imported["counts"]["added"] == len(scene.masters)
        assert {o["status"] for o in imported["outcomes"]} == {"added"}
        again = await call_checked(client, "import_calibration_masters",
                                   [[str(scene.masters["bias"])]])
        assert again["counts"]["unchanged"] == 1

        masters = await call_checked(client, "list_calibration_masters")
        assert {Path(m["path"]).stem for m in masters} == set(scene.masters)
        assert {m["status"] for m in masters} == {"ok"}
        darks = await call_checked(client, "list_calibration_masters", {"type": "dark"})
        assert {Path(m["path"]).stem for m in darks} == {
            "dark300", "dark300_gain0", "dark300_warm", "dark120"}
        assert all(m["frame_type"] == "dark" for m in darks)

        match = await call_checked(client, "match_calibration_masters",
                                   {"light": str(scene.lights[0])})
        assert Path(match["chosen"]["dark"]["path"]) == scene.masters["dark300"]
        assert Path(match["chosen"]["flat"]["path"]) == scene.masters["flat_ha"]
        assert Path(match["chosen"]["bias"]["path"]) == scene.masters["bias"]
        assert match["bias_applied"] is False
        assert match["problem"] is None
        assert match["meta"]["exposure_s"] == 300.0
        assert_distractors_rejected({Path(r["ref"]).stem: r["reason"]
                                     for r in match["rejected"]})

        db_file = app.data_dir / "calibration_masters.sqlite3"
        db_before = sha256(db_file)
        dry = await call_checked(client, "start_light_calibration", {
            "inputs": [str(scene.root / "lights")], "output_dir": str(out_dir),
            "dry_run": True})
        assert dry["operation_id"] is None
        assert dry["dry_run"] is True
        assert dry["total"] == 3
        frames = dry["plan"]["frames"]
        assert [Path(f["light"]) for f in frames] == sorted(scene.lights)
        assert {f["status"] for f in frames} == {"planned"}
        assert {Path(f["masters"]["dark"]["path"]).stem for f in frames} == {"dark300"}
        assert {Path(f["masters"]["flat"]["path"]).stem for f in frames} == {"flat_ha"}
        assert all(Path(f["output"]).parent == out_dir for f in frames)
        assert dry["plan"]["counts"] == {"planned": 3, "skipped": 0, "failed": 0}
        assert not out_dir.exists()  # a dry run writes nothing
        assert sha256(db_file) == db_before
        assert await client.call("list_operations") == []  # and is no operation

        status = await calibrate(client, inputs=[str(p) for p in scene.lights],
                                 output_dir=str(out_dir), workers=1)
        assert status["status"] == "completed"
        assert status["status_message"] == "completed - 3 calibrated, 0 skipped, 0 failed"
        assert status["progress"] == 100.0
        assert (status["total"], status["done"], status["skipped"], status["failed"]) == (
            3, 3, 0, 0)
        assert status["failures"] == []
        assert status["eta_s"] == 0.0
        assert status["current_file"] is None
        for light in scene.lights:
            output = out_dir / f"{light.stem}_calibrated.fits"
            data, header = fits.getdata(output, header=True)
            assert_close(data, expected_output(scene, light))
            assert header["CALIBRAT"] is True
            assert header["DARKMAST"] == "dark300.fits"
            assert header["FLATHASH"] == sha256(scene.masters["flat_ha"])
        assert snapshot(scene.root) == originals

        written = snapshot(out_dir)
        rerun = await calibrate(client, inputs=[str(scene.root / "lights")],
                                output_dir=str(out_dir), workers=1)
        assert (rerun["status"], rerun["done"], rerun["skipped"]) == ("completed", 0, 3)
        assert snapshot(out_dir) == written  # a second run writes nothing new

        operations = await client.call("list_operations")
        assert [o["kind"] for o in operations] == ["light_calibration"] * 2
        assert operations[0]["details"]["done"] == 3

        # Masters that moved or changed on disk are reported, never used silently.
        scene.masters["dark120"].rename(tmp_path / "elsewhere.fits")
        changed = scene.masters["flat_oiii"]
        changed.write_bytes(changed.read_bytes()[:-8] + b"\x01" * 8)  # same size, new bytes
        states = {Path(m["path"]).stem: m
                  for m in await call_checked(client, "list_calibration_masters")}
        assert states["dark120"]["status"] == "missing"
        assert "no longer exists" in states["dark120"]["status_message"]
        assert states["flat_oiii"]["status"] == "changed"
        assert states["dark300"]["status"] == "ok"
        match = await client.call("match_calibration_masters", [str(scene.lights[0])])
        lost = {Path(r["ref"]).stem: r["reason"] for r in match["rejected"]}
        assert lost["dark120"].startswith("unusable: ")

        removed = await call_checked(client, "remove_calibration_master",
                                     {"id": states["dark120"]["id"]})
        assert removed["id"] == states["dark120"]["id"]
        assert len(await client.call("list_calibration_masters")) == len(scene.masters) - 1
        await client.aclose()


async def test_a_batch_where_nothing_can_be_calibrated_fails(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "night", light_count=2)
    async with running_server(make_config(tmp_path / "data")) as (_, port):
        client = await LineClient.connect(port)
        status = await calibrate(client, inputs=[str(scene.root / "lights")], workers=1)
        assert status["status"] == "failed"
        assert status["failed"] == 2
        assert "none of the 2 lights could be calibrated" in status["error"]
        assert "no dark matches (none in the library)" in status["error"]
        assert [Path(f["light"]) for f in status["failures"]] == sorted(scene.lights)
        await client.aclose()


def slow_after(count: int, delay_s: float) -> Any:
    """A stand-in for ``calibrate_frame`` that calibrates the first ``count`` lights at full
    speed, then takes ``delay_s`` more per light, so a batch is long enough to cancel."""
    real = calibration_batch.calibrate_frame
    calls = [0]

    def calibrate_frame(task: FrameTask) -> FrameOutcome:
        calls[0] += 1
        if calls[0] > count:
            time.sleep(delay_s)  # simulates a large frame; nothing waits on it
        return real(task)

    return calibrate_frame


async def test_cancel_stops_a_long_batch_and_keeps_what_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lights_dir = tmp_path / "lights"
    lights_dir.mkdir()
    scene = make_scene(tmp_path / "night", light_count=1)
    light_count = 200
    data = scene.light_data[scene.lights[0]]
    for i in range(light_count):
        shutil.copyfile(scene.lights[0], lights_dir / f"light_{i:03d}.fits")
    originals = snapshot(lights_dir)
    out_dir = tmp_path / "out"
    monkeypatch.setattr(calibration_batch, "calibrate_frame", slow_after(3, 0.05))
    async with running_server(make_config(tmp_path / "data")) as (_, port):
        client = await LineClient.connect(port)
        await client.call("import_calibration_masters", [[str(scene.root / "masters")]])
        started = await client.call("start_light_calibration", {
            "inputs": [str(lights_dir)], "output_dir": str(out_dir), "workers": 1})
        op_id = started["operation_id"]
        assert started == {"operation_id": op_id, "total": light_count, "dry_run": False}
        await client.wait_event("OperationProgress", lambda e: e["OperationId"] == op_id
                                and frames_finished(e["Message"]) >= 3)

        refused = await client.error("start_light_calibration", {"inputs": [str(lights_dir)]})
        assert refused["code"] == 1
        assert_documented_error("start_light_calibration", refused)
        assert f"operation {op_id}" in refused["message"]
        busy = await call_checked(client, "get_light_calibration_status",
                                  {"operation_id": op_id})
        assert busy["status"] == "calibrating"
        assert busy["total"] == light_count
        assert busy["eta_s"] is None or busy["eta_s"] > 0

        cancelled = await call_checked(client, "cancel_light_calibration",
                                       {"operation_id": op_id})
        assert cancelled == {"operation_id": op_id, "cancelled": True, "status": "cancelled"}
        status = await call_checked(client, "get_light_calibration_status",
                                    {"operation_id": op_id})
        assert status["status"] == "cancelled"
        assert 3 <= status["done"] < light_count
        assert status["cancelled"] == light_count - status["done"]
        assert status["failed"] == 0
        assert "kept" in status["status_message"]
        assert status["progress"] < 50  # cancelled lights are not progress
        written = sorted(out_dir.iterdir())
        assert len(written) == status["done"]  # no partial or temporary files
        for output in written:
            assert_close(fits.getdata(output), expected_output_for(scene, data))
        assert snapshot(lights_dir) == originals
        again = await client.call("cancel_light_calibration", [op_id])
        assert again == {"operation_id": op_id, "cancelled": False, "status": "cancelled"}
        await client.aclose()


def frames_finished(message: str) -> int:
    """N of a progress message "N of M lights: ..."; -1 for any other message."""
    found = re.match(r"(\d+) of \d+ lights", message)
    return int(found[1]) if found else -1


def expected_output_for(scene: Scene, data: np.ndarray) -> np.ndarray:
    flat = scene.master_array("flat_ha")
    return (data.astype(np.float64) - scene.master_array("dark300")) / (flat / np.median(flat))


async def test_invalid_params_name_the_parameter(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "night", light_count=1)
    light = str(scene.lights[0])
    not_fits = tmp_path / "empty"
    not_fits.mkdir()
    cases: list[tuple[str, Any, str]] = [
        ("start_light_calibration", {}, "missing inputs"),
        ("start_light_calibration", {"inputs": []}, "invalid inputs: the list is empty"),
        ("start_light_calibration", {"inputs": light}, "invalid inputs"),
        ("start_light_calibration", {"inputs": [7]}, "invalid inputs: 7"),
        ("start_light_calibration", {"inputs": ["night/lights"]},
         'invalid inputs: "night/lights" is not an absolute path'),
        ("start_light_calibration", {"inputs": [str(tmp_path / "nope.fits")]},
         f"invalid inputs: {tmp_path / 'nope.fits'} does not exist"),
        ("start_light_calibration", {"inputs": [str(not_fits)]},
         "invalid inputs: no FITS files"),
        ("start_light_calibration", {"inputs": [light], "output_dir": "out"},
         'invalid output_dir: "out" is not an absolute path'),
        ("start_light_calibration", {"inputs": [light], "output_dir": light},
         "is not a directory"),
        ("start_light_calibration", {"inputs": [light], "suffix": "/x"}, "invalid suffix"),
        ("start_light_calibration", {"inputs": [light], "workers": 0}, "invalid workers"),
        ("start_light_calibration", {"inputs": [light], "temperature_tolerance": -1},
         "invalid temperature_tolerance"),
        ("start_light_calibration", {"inputs": [light], "max_flat_age_days": 1.5},
         "invalid max_flat_age_days"),
        ("start_light_calibration", {"inputs": [light], "dry_run": "yes"}, "invalid dry_run"),
        ("get_light_calibration_status", {"operation_id": 99}, "invalid operation_id"),
        ("cancel_light_calibration", {}, "missing operation_id"),
        ("list_calibration_masters", {"type": "light"}, "invalid type"),
        ("import_calibration_masters", {"paths": [str(tmp_path / "nope")]},
         "invalid paths: "),
        ("import_calibration_masters", {"paths": [light], "type": "defect_map"},
         "invalid type"),
        ("match_calibration_masters", {"light": "light.fits"}, "invalid light"),
        ("match_calibration_masters", {"light": str(tmp_path / "nope.fits")},
         "invalid light"),
        ("match_calibration_masters", {"light": str(scene.masters["dark300"])},
         "invalid light: dark300.fits is a dark frame, not a light"),
        ("remove_calibration_master", {"id": 42},
         "invalid id: no calibration master has id 42"),
        ("remove_calibration_master", {"id": "1"}, "invalid id"),
    ]
    async with running_server(make_config(tmp_path / "data")) as (_, port):
        client = await LineClient.connect(port)
        for method, params, message in cases:
            error = await client.error(method, params)
            assert error["code"] == -32602, (method, params, error)
            assert message in error["message"], (method, params, error)
            assert_documented_error(method, error)
        await client.aclose()
    assert not (tmp_path / "data" / "calibration_masters.sqlite3").exists()


async def test_match_refuses_a_tie_and_lists_the_candidates(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "night", light_count=1)
    twin = write_fits(tmp_path / "twin" / "dark300_copy.fits",
                      (scene.arrays["dark300"] + 1).astype(np.float32),
                      **rig(IMAGETYP="Master Dark", EXPTIME=300.0, CCD_TEMP=-10.1,
                            SET_TEMP=-10.0))
    assert fits.getdata(twin).shape == SHAPE
    async with running_server(make_config(tmp_path / "data")) as (_, port):
        client = await LineClient.connect(port)
        await client.call("import_calibration_masters",
                          {"paths": [str(scene.root / "masters"), str(twin)]})
        error = await client.error("match_calibration_masters", [str(scene.lights[0])])
        assert error["code"] == 1
        assert_documented_error("match_calibration_masters", error)
        assert "2 dark masters match equally well" in error["message"]
        assert "dark300.fits" in error["message"]
        assert "dark300_copy.fits" in error["message"]
        await client.aclose()
