"""Light-calibration benchmark: per-frame end-to-end time against copying the same bytes, and
1 worker against 2.

``run(quick)`` returns a Markdown section for ``docs/performance.md``. SPEC §8's bars: a light
calibrated end to end (read, calibrate, quality figures, header, atomic write) within 1.3× of
``shutil.copyfile`` of the same bytes (the light in, a file the size of the output out), and a
batch on 2 worker processes at least 1.7× as fast as on 1, on 4096² frames. References measured
in the same run: the copy (also with an ``fsync`` per file, since our outputs are fsynced before
they are renamed into place) and the straightforward astropy path of reference/calibration.md
§2b (``fits.getdata``, numpy with precomputed terms, ``fits.writeto``). Quick mode uses 2048²
frames and fewer of them. Files live in a temporary directory on the disk holding ``/tmp``;
timings are medians, with the page cache warm, as in calibration.md.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from phdserver.imaging.calibration import MasterTerms, calibrate, calibrate_fits16
from phdserver.imaging.calibration import warm_up as warm_up_kernel
from phdserver.library.calibration_batch import (
    BatchPlan,
    FrameStatus,
    calibrate_frame,
    plan_with_library,
    run_batch,
)
from phdserver.library.calibration_io import read_light
from phdserver.library.masters_db import MastersDB

MIB = 1024 * 1024


def _write_scene(root: Path, shape: tuple[int, int], lights: int) -> list[Path]:
    """Float32 masters (bias, 300 s dark, Ha flat) and NINA-like uint16 lights."""
    rng = np.random.default_rng(11)
    rig = {"INSTRUME": "Bench Cam", "TELESCOP": "Bench Scope", "GAIN": 100, "OFFSET": 50,
           "XBINNING": 1, "YBINNING": 1}
    bias = (500 + 2 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    dark = bias + 40 * (1 + 0.05 * rng.standard_normal(shape, dtype=np.float32))
    flat = 20000 * (1 + 0.05 * rng.standard_normal(shape, dtype=np.float32))
    masters = root / "masters"
    masters.mkdir(parents=True)
    for name, data, extra in (
        ("bias", bias, {"IMAGETYP": "Master Bias"}),
        ("dark", dark, {"IMAGETYP": "Master Dark", "EXPTIME": 300.0, "CCD-TEMP": -10.0}),
        ("flat", flat, {"IMAGETYP": "Master Flat", "FILTER": "Ha",
                        "DATE-OBS": "2024-01-15T18:00:00"}),
    ):
        header = fits.Header({**rig, **extra})
        fits.PrimaryHDU(data.astype(np.float32), header=header).writeto(masters / f"{name}.fits")
    paths = []
    sky = 1000 + 30 * rng.standard_normal(shape, dtype=np.float32)
    for i in range(lights):
        data = np.clip(dark + sky * flat / 20000 + i, 0, 65535).astype(np.uint16)
        header = fits.Header({**rig, "IMAGETYP": "LIGHT", "EXPOSURE": 300.0, "EXPTIME": 300.0,
                              "FILTER": "Ha", "CCD-TEMP": -10.0,
                              "DATE-OBS": "2024-01-15T22:00:00"})
        path = root / "lights" / f"M31_LIGHT_FILTER_Ha_EXPOSURE_300.00s_{i:04d}.fits"
        path.parent.mkdir(exist_ok=True)
        fits.PrimaryHDU(data, header=header).writeto(path)
        paths.append(path)
    return paths


def _plan(db: MastersDB, lights: list[Path], out: Path) -> BatchPlan:
    plan = plan_with_library(db, lights, output_dir=out)
    problems = [f.problem for f in plan.frames if f.problem]
    if problems:
        raise RuntimeError(f"benchmark scene does not plan: {problems[0]}")
    return plan


def _interleaved(fns: dict[str, Callable[[int, int], Any]], frames: int, rounds: int,
                 cleanup: Callable[[int], None]) -> dict[str, float]:
    """Median seconds per call of each ``fn(round, frame)``.

    Every call starts from a synced disk (``os.sync``, not timed): on this machine a writer
    that has left more than ~400 MB of dirty pages drops to the disk's speed (a 96 MiB copy goes
    from 30 ms to 300 ms), whichever method wrote them, so without the sync a method pays for
    the one before it. The method order reverses every round. The result is each method's
    best round (the median of its frames in that round): the disk is shared with other work
    whose bursts (and the ``discard`` of deleted files) can slow any round several-fold.
    ``cleanup(round)`` deletes a round's files (not timed) so the disk never fills."""
    rounds_of: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for r in range(rounds):
        for name in order if r % 2 == 0 else reversed(order):
            samples = []
            for i in range(frames):
                os.sync()
                t0 = time.perf_counter()
                fns[name](r, i)
                samples.append(time.perf_counter() - t0)
            rounds_of[name].append(statistics.median(samples))
        cleanup(r)
    return {name: min(values) for name, values in rounds_of.items()}


def _remove(*paths: Path) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _end_to_end(root: Path, db: MastersDB, lights: list[Path],
                rounds: int) -> dict[str, float]:
    warm_up_kernel()
    plans = {key: [_plan(db, lights, root / f"{key}{r}") for r in range(rounds)]
             for key in ("ours", "nofsync")}
    for frame in _plan(db, lights, root / "warm").frames:  # page cache, master terms, kernel
        assert frame.task is not None
        calibrate_frame(frame.task)
    output = Path(_plan(db, lights, root / "warm").frames[0].output)

    def ours(key: str) -> Callable[[int, int], None]:
        def calibrate_one(r: int, i: int) -> None:
            task = plans[key][r].frames[i].task
            assert task is not None
            if calibrate_frame(task).status is not FrameStatus.DONE:
                raise RuntimeError("a benchmark frame failed")
        return calibrate_one

    def without_fsync(r: int, i: int) -> None:
        real = os.fsync
        os.fsync = lambda fd: None  # diagnostic only: what the fsync of each output costs
        try:
            ours("nofsync")(r, i)
        finally:
            os.fsync = real

    copies = root / "copies"
    copies.mkdir()

    def copy(durable: bool) -> Callable[[int, int], None]:
        def copy_one(r: int, i: int) -> None:
            a, b = copies / f"in{r}_{i}{durable}", copies / f"out{r}_{i}{durable}"
            shutil.copyfile(lights[i], a)
            shutil.copyfile(output, b)
            if durable:
                _fsync(a)
                _fsync(b)
        return copy_one

    bias, dark, flat = (fits.getdata(root / "masters" / f"{n}.fits") for n in
                        ("bias", "dark", "flat"))
    terms = MasterTerms.from_masters(bias=bias, dark=dark, flat=flat, light_exposure_s=300.0,
                                     dark_exposure_s=300.0)
    astropy_dir = root / "astropy"
    astropy_dir.mkdir()

    def astropy_path(r: int, i: int) -> None:
        data, header = fits.getdata(lights[i], header=True)
        fits.writeto(astropy_dir / f"{r}_{i}.fits", calibrate(data, terms), header)

    def cleanup(r: int) -> None:
        _remove(root / f"ours{r}", root / f"nofsync{r}",
                *copies.glob(f"*{r}_*"), *astropy_dir.glob(f"{r}_*"))

    light = read_light(lights[0])
    out = np.empty(terms.shape, ">f4")
    result = _interleaved({
        "ours": ours("ours"), "copy": copy(False), "durable": copy(True),
        "nofsync": without_fsync, "astropy": astropy_path,
        "read": lambda r, i: read_light(lights[i]),
        "kernel": lambda r, i: calibrate_fits16(light.data, terms, bzero=32768, out=out),
    }, len(lights), rounds, cleanup)
    return result


def _stub_fsync() -> None:
    """Pool initializer for the diagnostic rows: outputs are not fsynced in this process."""
    os.fsync = lambda fd: None


def _workers(root: Path, db: MastersDB, lights: list[Path],
             rounds: int) -> dict[tuple[int, bool], float]:
    """Seconds per frame of a batch through warm process pools of 1 and of 2 workers, with and
    without the fsync of each output, taking turns; each batch starts from a synced disk and
    stays under the dirty-page limit. The result is the median over batches."""
    spawn = get_context("spawn")
    keys = [(1, True), (2, True), (1, False), (2, False)]
    pools = {key: ProcessPoolExecutor(key[0], mp_context=spawn,
                                      initializer=None if key[1] else _stub_fsync)
             for key in keys}
    samples: dict[tuple[int, bool], list[float]] = {key: [] for key in keys}
    try:
        for key, pool in pools.items():  # spawn, imports, master terms, kernel
            for w in range(2):
                run_batch(_plan(db, lights, root / f"warm{key}_{w}"), pool,
                          max_in_flight=2 * key[0])
                _remove(root / f"warm{key}_{w}")
        for r in range(rounds):
            for key in keys if r % 2 == 0 else reversed(keys):
                plan = _plan(db, lights, root / f"pool{key}_{r}")
                os.sync()
                t0 = time.perf_counter()
                report = run_batch(plan, pools[key], max_in_flight=2 * key[0])
                samples[key].append((time.perf_counter() - t0) / len(lights))
                if report.count(FrameStatus.DONE) != len(lights):
                    raise RuntimeError(f"batch failed: {report.to_json()['counts']}")
                _remove(root / f"pool{key}_{r}")
    finally:
        for pool in pools.values():
            pool.shutdown()
    return {key: statistics.median(values) for key, values in samples.items()}


def run(quick: bool = False) -> str:
    """Run the calibration benchmark and return its Markdown section."""
    started = time.perf_counter()
    side = 2048 if quick else 4096
    shape = (side, side)
    frames, rounds, batch, batches = (4, 2, 4, 4) if quick else (8, 4, 8, 6)
    with tempfile.TemporaryDirectory(prefix="phdserver-bench-cal-") as tmp:
        root = Path(tmp)
        lights = _write_scene(root, shape, frames)
        with MastersDB(root / "masters.sqlite3") as db:
            db.import_paths([root / "masters"])
            e2e = _end_to_end(root, db, lights, rounds)
            pools = _workers(root, db, lights[:batch], batches)
    light_mib = side * side * 2 / MIB
    ratio = e2e["ours"] / e2e["copy"]
    speedup = pools[1, True] / pools[2, True]
    speedup_stubbed = pools[1, False] / pools[2, False]
    stubbed_ratio = e2e["nofsync"] / e2e["copy"]
    verdict = {True: "met", False: "NOT met"}
    rows = [
        ("**phdserver, end to end** (`calibrate_frame`: read, fused kernel, quality, header, "
         "atomic write, no fsync)", e2e["ours"]),
        ("`shutil.copyfile` of the light + of a file the size of the output", e2e["copy"]),
        ("same copies, each fsynced", e2e["durable"]),
        ("phdserver with `os.fsync` stubbed out (diagnostic: the cost of durability)",
         e2e["nofsync"]),
        ("astropy path: `fits.getdata` + numpy with precomputed terms + `fits.writeto`",
         e2e["astropy"]),
        ("of which: `read_light` (header by astropy, data by `np.fromfile`)", e2e["read"]),
        ("of which: `calibrate_fits16` (byte swap, BZERO, subtract, multiply, swap back)",
         e2e["kernel"]),
        ("batch, 1 worker process (per frame)", pools[1, True]),
        ("batch, 2 worker processes (per frame)", pools[2, True]),
        ("batch, 1 worker process, `os.fsync` stubbed (diagnostic)", pools[1, False]),
        ("batch, 2 worker processes, `os.fsync` stubbed (diagnostic)", pools[2, False]),
    ]
    lines = [
        "## Light calibration: end to end against a copy, 1 and 2 workers",
        "",
        f"`benchmarks/bench_calibration.py`, {'quick' if quick else 'full'} mode, "
        f"{os.cpu_count()} CPUs, took {time.perf_counter() - started:.0f} s. {frames} lights of "
        f"{side}×{side} uint16 ({light_mib:.0f} MiB in, {2 * light_mib:.0f} MiB float32 out), "
        f"float32 bias, dark and flat; page cache warm, each frame (each batch of {batch} for "
        f"the pools) started from a synced disk. Per-frame rows: the best of {rounds} rounds' "
        f"medians; pool rows: the median of {batches} batches.",
        "",
        f"- End to end {e2e['ours'] * 1000:.0f} ms per frame, {ratio:.2f}× the plain copy "
        f"(bar ≤ 1.3×): **{verdict[ratio <= 1.3]}**; {e2e['ours'] / e2e['durable']:.2f}× the "
        "fsynced copy.",
        f"- 2 workers {speedup:.2f}× as fast as 1 (bar ≥ 1.7×): **{verdict[speedup >= 1.7]}**.",
        f"- Without the fsync of each output (diagnostic rows): {stubbed_ratio:.2f}× the plain "
        f"copy, and 2 workers {speedup_stubbed:.2f}× as fast as 1.",
        "",
        "| method | ms per frame |",
        "|---|---|",
        *(f"| {name} | {seconds * 1000:.1f} |" for name, seconds in rows),
        "",
        "Outputs are renamed into place atomically but not fsynced (docs/decisions.md says "
        "why; the fsynced copy row shows what durability would cost). The 2-worker figure is "
        "bounded by the machine: two processes share its memory bandwidth and one disk, and "
        "other work running at the same time counts against both.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(run(quick="--quick" in sys.argv))
