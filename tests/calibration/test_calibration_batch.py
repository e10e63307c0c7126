"""Batches end to end: synthetic FITS with distractors, the exact formulas, headers, reruns."""

from __future__ import annotations

import json
import os
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from phdserver.library.fits_headers import FrameType
from phdserver.library.masters_db import MastersDB
from phdserver.library.matching import MatchPolicy
from phdserver.pipeline import calibration_worker
from phdserver.pipeline.calibration_batch import (
    BatchProgress,
    FrameStatus,
    find_lights,
    plan_batch,
    plan_with_library,
    run_batch,
)
from phdserver.pipeline.calibration_io import output_path_for
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


def _library(tmp_path: Path, scene: Scene) -> MastersDB:
    db = MastersDB.in_data_dir(tmp_path / "data")
    db.import_paths([scene.root / "masters"])
    return db


def _flat_norm(scene: Scene, name: str = "flat_ha") -> np.ndarray:
    flat = scene.master_array(name)
    return flat / np.median(flat)


def _assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    actual = actual.astype(np.float64)
    assert np.all(np.abs(actual - expected) <= 1e-4 * np.maximum(np.abs(expected), 1.0))


def test_done_means(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "night")
    originals = snapshot(scene.root)
    out_dir = tmp_path / "calibrated"
    with _library(tmp_path, scene) as db:
        plan = plan_with_library(db, scene.lights, output_dir=out_dir)
    assert [f.problem for f in plan.frames] == [None] * 3
    match = plan.frames[0].match
    assert match is not None
    assert match.chosen[FrameType.DARK].path == scene.masters["dark300"]
    assert match.chosen[FrameType.FLAT].path == scene.masters["flat_ha"]
    assert_distractors_rejected({r.master.path.stem: r.reason for r in match.rejected})

    progress: list[BatchProgress] = []
    with ThreadPoolExecutor(2) as pool:
        report = run_batch(plan, pool, progress_callback=progress.append)
    assert report.count(FrameStatus.DONE) == 3
    assert progress[-1].done == 3
    assert progress[-1].total == 3
    assert progress[-1].eta_s == 0.0
    dark, flat_norm = scene.master_array("dark300"), _flat_norm(scene)
    for light in scene.lights:
        output = out_dir / f"{light.stem}_calibrated.fits"
        with fits.open(output) as hdul:
            assert len(hdul) == 1
            data, header = hdul[0].data, hdul[0].header
            assert header["BITPIX"] == -32
            assert "BZERO" not in header
            expected = (scene.light_data[light].astype(np.float64) - dark) / flat_norm
            _assert_close(data, expected)
            assert header["CALIBRAT"] is True
            assert header["CALSOFT"].startswith("phdserver ")
            assert header["CALDATE"]
            assert header["DARKMAST"] == "dark300.fits"
            assert header["DARKHASH"] == sha256(scene.masters["dark300"])
            assert header["FLATMAST"] == "flat_ha.fits"
            assert header["FLATHASH"] == sha256(scene.masters["flat_ha"])
            assert header["CALHASH"] == "SHA-256"
            assert "BIASMAST" not in header  # the dark carries the bias
            assert header["DARKSCAL"] == 1.0
            assert header["CALMED"] == pytest.approx(np.median(expected), rel=0.01)
            assert 0.0 <= header["CALNEGFR"] <= 1.0
            assert header["CALNOISE"] > 0
            history = " ".join(str(h) for h in header["HISTORY"])
            assert "dark subtracted" in history
            assert "divided by the flat" in history
            for key in ("INSTRUME", "FILTER", "DATE-LOC", "DATE-OBS", "SET-TEMP", "READOUTM"):
                assert header[key] == fits.getheader(light)[key], key
    assert snapshot(scene.root) == originals  # originals byte for byte, and untouched

    written = snapshot(out_dir)
    with _library(tmp_path, scene) as db:
        again = run_batch(plan_with_library(db, scene.lights, output_dir=out_dir),
                          ThreadPoolExecutor(1))
    assert again.count(FrameStatus.SKIPPED) == 3
    assert snapshot(out_dir) == written  # a second run writes nothing new

    dry_dir = tmp_path / "dry"
    db_file = tmp_path / "data" / "calibration_masters.sqlite3"
    before = sha256(db_file)
    with _library(tmp_path, scene) as db:
        dry_plan = plan_with_library(db, scene.lights, output_dir=dry_dir, refresh=False)
    dry = run_batch(dry_plan, dry_run=True)
    assert [o.status for o in dry.outcomes] == [FrameStatus.PLANNED] * 3
    assert not dry_dir.exists()
    assert sha256(db_file) == before
    assert json.loads(json.dumps(dry.to_json()))["counts"]["planned"] == 3
    assert json.dumps(dry_plan.to_json(explain=True))


def test_scaled_dark_formula_and_headers(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "night", light_count=2, light_exposure_s=600.0)
    with _library(tmp_path, scene) as db:
        plan = plan_with_library(db, scene.lights)
    frame = plan.frames[0]
    assert frame.match is not None
    assert frame.match.scaled_dark
    assert frame.match.chosen[FrameType.DARK].path == scene.masters["dark300"]
    report = run_batch(plan, ThreadPoolExecutor(1))
    assert report.count(FrameStatus.DONE) == 2
    bias, dark = scene.master_array("bias"), scene.master_array("dark300")
    for light in scene.lights:
        output = output_path_for(light, output_dir=None)
        assert output.parent == light.parent
        data, header = fits.getdata(output, header=True)
        expected = (scene.light_data[light] - bias - (dark - bias) * 600 / 300) / _flat_norm(scene)
        _assert_close(data, expected)
        assert header["BIASMAST"] == "bias.fits"
        assert header["BIASHASH"] == sha256(scene.masters["bias"])
        assert header["DARKSCAL"] == 2.0
        assert "scaled by 2" in " ".join(str(h) for h in header["HISTORY"])


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_a_failing_frame_is_reported_and_the_batch_goes_on(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "night", light_count=3)
    broken_at_plan = scene.root / "lights" / "zz_broken.fits"
    broken_at_plan.write_bytes(b"SIMPLE  = garbage")
    with _library(tmp_path, scene) as db:
        plan = plan_with_library(db, [*scene.lights, broken_at_plan])
    victim = scene.lights[1]
    victim.write_bytes(victim.read_bytes()[:4000])  # truncated after planning
    report = run_batch(plan, ThreadPoolExecutor(2))
    by_light = {Path(o.light).name: o for o in report.outcomes}
    assert by_light[victim.name].status is FrameStatus.FAILED
    assert "truncated" in by_light[victim.name].reason
    assert by_light[broken_at_plan.name].status is FrameStatus.FAILED
    assert by_light[broken_at_plan.name].reason
    assert report.count(FrameStatus.DONE) == 2
    assert not output_path_for(victim, output_dir=None).exists()


def test_a_master_changed_after_planning_is_never_used(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "night", light_count=1)
    with _library(tmp_path, scene) as db:
        plan = plan_with_library(db, scene.lights)
    os.utime(scene.masters["flat_ha"], ns=(1, 1))
    report = run_batch(plan, ThreadPoolExecutor(1))
    assert report.outcomes[0].status is FrameStatus.FAILED
    assert "changed on disk" in report.outcomes[0].reason


def test_missing_masters_are_rejected_at_planning(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "night", light_count=1)
    with _library(tmp_path, scene) as db:
        scene.masters["dark300"].rename(tmp_path / "moved.fits")
        plan = plan_with_library(db, scene.lights)
        strict = plan_with_library(db, scene.lights,
                                   policy=MatchPolicy(allow_dark_scaling=False))
    match = plan.frames[0].match
    assert match is not None
    assert match.scaled_dark  # the 120 s dark, scaled with the bias, replaces the lost one
    assert match.chosen[FrameType.DARK].path == scene.masters["dark120"]
    lost = {r.master.path.stem: r.reason for r in match.rejected}
    assert lost["dark300"].startswith("unusable: ")
    assert "no longer exists" in lost["dark300"]
    frame = strict.frames[0]
    assert frame.task is None
    assert frame.problem is not None
    assert "no dark matches" in frame.problem
    assert "no longer exists" in frame.problem


def test_cancel_stops_submitting(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "night", light_count=4)
    with _library(tmp_path, scene) as db:
        plan = plan_with_library(db, scene.lights)
    cancel = threading.Event()

    def on_progress(progress: BatchProgress) -> None:
        if progress.done >= 1:
            cancel.set()

    with ThreadPoolExecutor(1) as pool:
        report = run_batch(plan, pool, progress_callback=on_progress, cancel_event=cancel,
                           max_in_flight=1)
    assert report.cancelled
    assert report.count(FrameStatus.DONE) == 1
    assert report.count(FrameStatus.CANCELLED) == 3
    assert sum(output_path_for(p, output_dir=None).exists() for p in scene.lights) == 1


def test_overwrite_replaces_outputs(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "night", light_count=1)
    with _library(tmp_path, scene) as db:
        plan = plan_with_library(db, scene.lights)
    output = plan.frames[0].output
    output.write_bytes(b"stale")
    stale = run_batch(plan, ThreadPoolExecutor(1)).outcomes[0]
    assert stale.status is FrameStatus.FAILED  # not a finished output: reported, not skipped
    assert "run again with overwrite" in stale.reason
    assert output.read_bytes() == b"stale"
    dry = run_batch(plan, dry_run=True, overwrite=True)
    assert dry.outcomes[0].reason == "would overwrite"
    assert output.read_bytes() == b"stale"
    report = run_batch(plan, ThreadPoolExecutor(1), overwrite=True)
    assert report.outcomes[0].status is FrameStatus.DONE
    assert fits.getheader(output)["CALIBRAT"] is True


def test_process_pool_with_two_workers(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "night", light_count=4)
    with _library(tmp_path, scene) as db:
        plan = plan_with_library(db, scene.lights, output_dir=tmp_path / "out")
    report = run_batch(plan, workers=2)
    assert report.count(FrameStatus.DONE) == 4, report.to_json()
    dark, flat_norm = scene.master_array("dark300"), _flat_norm(scene)
    for light in scene.lights:
        data = fits.getdata(tmp_path / "out" / f"{light.stem}_calibrated.fits")
        _assert_close(data, (scene.light_data[light] - dark) / flat_norm)


def test_tasks_and_outcomes_pickle(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "night", light_count=1)
    with _library(tmp_path, scene) as db:
        plan = plan_with_library(db, scene.lights)
    task = plan.frames[0].task
    assert task is not None
    assert pickle.loads(pickle.dumps(task)) == task
    assert json.loads(json.dumps(task.to_json()))["dark"]["kind"] == "dark"
    report = run_batch(plan, ThreadPoolExecutor(1))
    assert pickle.loads(pickle.dumps(report.outcomes[0])) == report.outcomes[0]


def test_nina_lights_with_facts_only_in_their_names(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "night", light_count=0)
    name = ("2024-01-15_M31_LIGHT_FILTER_Ha_EXPOSURE_300.00s_GAIN_100_OFFSET_50"
            "_SET-TEMP_-10.00_0001.fits")
    data = np.full(SHAPE, 1500, np.uint16)
    light = write_fits(tmp_path / "lights" / name, data,
                       **rig(GAIN=None, OFFSET=None, CCD_TEMP=-10.2,
                             DATE_OBS="2024-01-15T21:00:00"))
    with _library(tmp_path, scene) as db:
        plan = plan_with_library(db, [light])
    frame = plan.frames[0]
    assert frame.problem is None, frame.problem
    assert frame.meta is not None
    assert frame.meta.source_of("exposure_s") == "file name"
    assert frame.meta.source_of("filter") == "file name"
    assert frame.meta.frame_type is FrameType.LIGHT
    assert run_batch(plan, ThreadPoolExecutor(1)).outcomes[0].status is FrameStatus.DONE


def test_unusual_light_encodings_take_the_astropy_path(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "night", light_count=1)
    source = scene.lights[0]
    physical = scene.light_data[source].astype(np.float64)
    header = fits.getheader(source)
    as_float = source.parent / "float_light.fits"
    fits.PrimaryHDU(physical.astype(np.float32), header=header).writeto(as_float)
    scaled = source.parent / "scaled_light.fits"
    hdu = fits.PrimaryHDU(physical.astype(np.float32), header=header)
    hdu.scale("int16", bscale=2.0, bzero=1000.0)
    hdu.writeto(scaled)
    with _library(tmp_path, scene) as db:
        plan = plan_with_library(db, [as_float, scaled], output_dir=tmp_path / "out")
    assert run_batch(plan, ThreadPoolExecutor(1)).count(FrameStatus.DONE) == 2
    dark, flat_norm = scene.master_array("dark300"), _flat_norm(scene)
    expected = (physical - dark) / flat_norm
    _assert_close(fits.getdata(tmp_path / "out" / "float_light_calibrated.fits"), expected)
    stored = fits.getdata(scaled).astype(np.float64)  # what the BSCALE file really holds
    _assert_close(fits.getdata(tmp_path / "out" / "scaled_light_calibrated.fits"),
                  (stored - dark) / flat_norm)


def test_bands_of_any_height_give_the_same_frame(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's bands (64 rows of a 4096-wide frame) change no pixel and no figure: frames
    cut in bands of 1, 5 and 7 rows (the last one short) equal the one-band result, for each
    way a light is read (stored 16-bit, float, astropy-scaled)."""
    scene = make_scene(tmp_path / "night", light_count=1)
    source = scene.lights[0]
    physical = scene.light_data[source].astype(np.float32)
    as_float = source.parent / "float_light.fits"
    fits.PrimaryHDU(physical, header=fits.getheader(source)).writeto(as_float)
    scaled = source.parent / "scaled_light.fits"
    hdu = fits.PrimaryHDU(physical, header=fits.getheader(source))
    hdu.scale("int16", bscale=2.0, bzero=1000.0)
    hdu.writeto(scaled)
    lights = [source, as_float, scaled]
    results: dict[int, list[tuple[np.ndarray, list[object]]]] = {}
    for rows in (SHAPE[0], 1, 5, 7):
        monkeypatch.setattr(calibration_worker, "band_rows", lambda width, rows=rows: rows)
        out = tmp_path / f"rows{rows}"
        with _library(tmp_path, scene) as db:
            plan = plan_with_library(db, lights, output_dir=out)
        assert run_batch(plan, ThreadPoolExecutor(1)).count(FrameStatus.DONE) == 3
        results[rows] = []
        for light in lights:
            with fits.open(output_path_for(light, output_dir=out)) as hdul:
                header = hdul[0].header
                figures = [header[k] for k in ("CALMED", "CALNOISE", "CALNEGFR", "CALNANFR")]
                results[rows].append((hdul[0].data.copy(), figures))
    for rows in (1, 5, 7):
        for (data, figures), (whole, whole_figures) in zip(results[rows], results[SHAPE[0]],
                                                           strict=True):
            assert np.array_equal(data, whole)
            assert figures == whole_figures


def test_planning_refuses_unsafe_or_pointless_work(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "night", light_count=2)
    with _library(tmp_path, scene) as db:
        masters = db.list_masters()
    same_name = plan_batch(scene.lights, masters, suffix="")
    assert all("would overwrite an input" in (f.problem or "") for f in same_name.frames)
    twin = tmp_path / "other" / scene.lights[0].name
    twin.parent.mkdir()
    twin.write_bytes(scene.lights[0].read_bytes())
    collide = plan_batch([scene.lights[0], twin], masters, output_dir=tmp_path / "out")
    assert collide.frames[0].problem is None
    assert "also the output of" in (collide.frames[1].problem or "")
    not_light = plan_batch([scene.masters["dark300"]], masters, output_dir=tmp_path / "o2")
    assert "not a light" in (not_light.frames[0].problem or "")
    run_batch(plan_batch(scene.lights[:1], masters), ThreadPoolExecutor(1))
    done = output_path_for(scene.lights[0], output_dir=None)
    again = plan_batch([done], masters, output_dir=tmp_path / "o3")
    assert "already calibrated" in (again.frames[0].problem or "")
    assert find_lights([scene.root / "lights"]) == sorted(scene.lights)
    strict = plan_batch(scene.lights[:1], masters,
                        policy=MatchPolicy(temperature_tolerance_c=0.1))
    assert "no dark matches" in (strict.frames[0].problem or "")


def test_a_dark_library_hdu_calibrates_a_guide_frame(tmp_path: Path) -> None:
    from phdserver.library.dark_library import DarkFrame, DarkLibrary, write_dark_library

    frames = [DarkFrame(data=np.full(SHAPE, 500 + 10 * e // 1000, np.uint16), exposure_ms=e,
                        gain=60, camera="Guide Cam", temperature_c=-5.0) for e in (1000, 2000)]
    library = tmp_path / "darks_defects" / "PHD2_dark_lib_1.fit"
    write_dark_library(library, DarkLibrary.from_frames(frames), "phdserver test")
    light_data = np.arange(SHAPE[0] * SHAPE[1], dtype=np.uint16).reshape(SHAPE) + 600
    light = write_fits(tmp_path / "guide.fits", light_data, IMAGETYP="Light Frame",
                       INSTRUME="Guide Cam", GAIN=60, EXPOSURE=2.0, CCD_TEMP=-4.0)
    with MastersDB.in_data_dir(tmp_path / "data") as db:
        db.register_dark_library(library)
        plan = plan_with_library(db, [light], policy=MatchPolicy(require_flat=False))
    assert plan.frames[0].problem is None, plan.frames[0].problem
    assert run_batch(plan, ThreadPoolExecutor(1)).outcomes[0].status is FrameStatus.DONE
    data, header = fits.getdata(output_path_for(light, output_dir=None), header=True)
    assert np.array_equal(data, light_data.astype(np.float32) - 520)
    assert header["DARKMAST"] == "PHD2_dark_lib_1.fit#1"
    assert "FLATMAST" not in header
    assert "no flat: that step is skipped" in " ".join(str(h) for h in header["HISTORY"])
