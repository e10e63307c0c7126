"""``phdserver masters ...`` and ``phdserver calibrate`` as a user runs them: subprocesses,
no daemon, synthetic FITS in temporary directories.

The calibration here runs on the default executor, a process pool (``--workers 2`` so that it
is one on any machine), end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from phdserver.cli import calibrate as cli_calibrate
from phdserver.pipeline import calibration_io
from tests.calibration import Scene, make_scene, sha256, snapshot


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_DATA_HOME": str(cwd / "xdg")}  # the default data dir, in tmp
    return subprocess.run([sys.executable, "-m", "phdserver", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def run_json(cwd: Path, *args: str) -> Any:
    done = run(cwd, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def expected_output(scene: Scene, light: Path) -> np.ndarray:
    flat = scene.master_array("flat_ha")
    return (scene.light_data[light].astype(np.float64) - scene.master_array("dark300")) / (
        flat / np.median(flat))


def test_masters_and_calibrate_without_a_daemon(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "night")
    originals = snapshot(scene.root)
    data = ("--data-dir", str(tmp_path / "data"))

    done = run(tmp_path, "masters", "import", "night/masters", *data)  # relative to the cwd
    assert done.returncode == 0, done.stderr
    assert "10 added" in done.stdout
    masters = run_json(tmp_path, "masters", "list", *data)
    assert isinstance(masters, list)
    assert {Path(m["path"]).stem for m in masters} == set(scene.masters)
    assert {m["status"] for m in masters} == {"ok"}
    flats = run_json(tmp_path, "masters", "list", "--type", "flat", *data)
    assert {Path(m["path"]).stem for m in flats} == {"flat_ha", "flat_ha_old", "flat_ha_future",
                                                     "flat_oiii"}

    light = str(scene.lights[0])
    match = run_json(tmp_path, "masters", "match", light, *data)
    assert Path(match["chosen"]["dark"]["path"]) == scene.masters["dark300"]
    assert Path(match["chosen"]["flat"]["path"]) == scene.masters["flat_ha"]
    lost = {Path(r["ref"]).stem: r["reason"] for r in match["rejected"]}
    assert "15.0 °C from the light's" in lost["dark300_warm"]
    assert "never a flat from the future" in lost["flat_ha_future"]
    assert "filter 'OIII'" in lost["flat_oiii"]
    text = run(tmp_path, "masters", "match", light, *data)
    assert text.returncode == 0
    dark_line = next(line for line in text.stdout.splitlines() if line.startswith("dark: "))
    assert dark_line.endswith("dark300.fits")
    assert "gain 0, the light's is 100" in text.stdout
    strict = run(tmp_path, "masters", "match", light, "--temperature-tolerance", "0.1",
                 "--no-dark-scaling", *data)
    assert strict.returncode == 1
    assert "cannot calibrate: no dark matches" in strict.stdout

    out = tmp_path / "out"
    db_file = tmp_path / "data" / "calibration_masters.sqlite3"
    db_before = sha256(db_file)
    dry = run(tmp_path, "calibrate", "night/lights", "--out", str(out), "--dry-run", *data)
    assert dry.returncode == 0, dry.stderr
    assert "3 to calibrate" in dry.stdout
    plan = run_json(tmp_path, "calibrate", *map(str, scene.lights), "--out", str(out),
                    "--dry-run", *data)
    assert plan["dry_run"] is True
    assert plan["plan"]["counts"] == {"planned": 3, "skipped": 0, "failed": 0}
    assert not out.exists()  # a dry run writes nothing
    assert sha256(db_file) == db_before

    report = run_json(tmp_path, "calibrate", "night/lights", "--out", str(out),
                      "--workers", "2", *data)
    assert report["counts"]["done"] == 3, report
    for light_path in scene.lights:
        output = out / f"{light_path.stem}_calibrated.fits"
        calibrated, header = fits.getdata(output, header=True)
        expected = expected_output(scene, light_path)
        assert np.all(np.abs(calibrated - expected) <= 1e-4 * np.maximum(np.abs(expected), 1))
        assert header["CALIBRAT"] is True
        assert header["DARKMAST"] == "dark300.fits"
        assert header["FLATMAST"] == "flat_ha.fits"
    assert snapshot(scene.root) == originals
    written = snapshot(out)
    again = run(tmp_path, "calibrate", "night/lights", "--out", str(out), "--workers", "1", *data)
    assert again.returncode == 0, again.stderr
    assert "0 done, 3 skipped" in again.stdout
    assert snapshot(out) == written  # a second run writes nothing new

    dark120 = next(m["id"] for m in masters if Path(m["path"]).stem == "dark120")
    removed = run(tmp_path, "masters", "remove", str(dark120), *data)
    assert removed.returncode == 0
    assert "dark120.fits" in removed.stdout
    unknown = run(tmp_path, "masters", "remove", str(dark120), *data)
    assert unknown.returncode == 1
    assert f"No calibration master has id {dark120}" in unknown.stderr


def test_the_default_data_dir_is_the_daemons_and_errors_are_clear(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "night", light_count=1)
    fresh = run(tmp_path, "calibrate", str(scene.lights[0]), "--workers", "1")
    assert fresh.returncode == 1  # no library yet: nothing matches, the frame fails
    assert "no dark matches (none in the library)" in fresh.stdout
    assert not (tmp_path / "xdg").exists()  # a failed plan creates no library
    assert run(tmp_path, "masters", "import", str(scene.masters["dark300"])).returncode == 0
    library = tmp_path / "xdg" / "phdserver" / "calibration_masters.sqlite3"
    assert library.exists()
    assert [m["frame_type"] for m in run_json(tmp_path, "masters", "list")] == ["dark"]

    missing = run(tmp_path, "calibrate", "nope.fits", "--out", "o")
    assert missing.returncode == 2
    assert "nope.fits does not exist" in missing.stderr
    not_light = run(tmp_path, "masters", "match", str(scene.masters["dark300"]))
    assert not_light.returncode == 2
    assert "is a dark frame, not a light" in not_light.stderr
    skipped = run(tmp_path, "masters", "import", str(scene.lights[0]))
    assert skipped.returncode == 0
    assert skipped.stdout.startswith("skipped")
    assert not (tmp_path / "o").exists()


def test_the_parser_default_suffix_is_the_librarys() -> None:
    assert cli_calibrate.DEFAULT_SUFFIX == calibration_io.DEFAULT_SUFFIX
