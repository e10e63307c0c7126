"""Calibration-library methods: the master index, matching, and batch light calibration
(extensions: PHD2 calibrates nothing but guide frames).

Paths are the daemon's: they must be absolute (the daemon has no meaningful working directory
for a client) and name files the daemon can see. Everything that touches the disk (SQLite,
FITS headers, checksums, directory listings) runs in ``trio.to_thread``, and each SQLite
connection is opened and closed in the thread that uses it.

Policies (docs/api.md, "Calibration library"):

* A **dry run** is answered at once, with the plan, and is not an operation: it reads headers
  and the library and writes nothing, which takes milliseconds per light.
* **One calibration at a time**: a second ``start_light_calibration`` while one runs is
  refused (code 1, naming the running one). A batch already uses every core; a second would
  only share them, and two batches writing one directory would race for the same outputs.
  Light calibration does not use the camera, so it runs alongside looping and builds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from phdserver.errors import InvalidParams, Refused
from phdserver.library.fits_headers import FrameType
from phdserver.library.masters_db import ImportStatus, UnknownMaster
from phdserver.library.matching import MatchPolicy
from phdserver.operations import Kind
from phdserver.operations.light_calibration import (
    LightCalibrationRequest,
    NotALight,
    dry_run_summary,
    expand_inputs,
    import_masters,
    list_masters,
    match_light,
    plan_light_calibration,
    remove_master,
    run_light_calibration,
)
from phdserver.operations.registry import OperationHandle
from phdserver.pipeline.calibration_batch import run_batch
from phdserver.pipeline.calibration_io import DEFAULT_SUFFIX

from ._params import Param, absolute_path
from ._registry import rpc_method
from .operations import OPERATION_ID, active_operation, cancel_and_wait, snapshot_of_kind

if TYPE_CHECKING:
    from phdserver.app import App

__all__ = ["CalibrationMethods"]

MAX_SUFFIX_LENGTH = 64
IMPORT_TYPES = ("bias", "dark", "flat")
LIST_TYPES = ("bias", "dark", "flat", "dark_flat", "defect_map")
STATUS_MEMBERS = ("total", "runnable", "done", "skipped", "failed", "cancelled", "current_file",
                  "eta_s", "elapsed_s")


def _path_list(name: str) -> Any:
    def check(value: list[Any]) -> tuple[Path, ...]:
        if not value:
            raise InvalidParams(f"invalid {name}: the list is empty", param=name)
        for item in value:
            if not isinstance(item, str):
                raise InvalidParams(f"invalid {name}: {item!r}, expected absolute paths "
                                    "(strings)", param=name)
        return tuple(absolute_path(name, item) for item in value)

    return check


def _suffix(value: str) -> str:
    if "/" in value or "\\" in value or "\0" in value:
        raise InvalidParams(f'invalid suffix: "{value[:40]}" must not contain a path separator',
                            param="suffix")
    return value


def _must_exist(name: str, paths: tuple[Path, ...]) -> None:
    for path in paths:
        if not path.exists():
            raise InvalidParams(f"invalid {name}: {path} does not exist", param=name)


POLICY_PARAMS = (
    Param(name="temperature_tolerance", type="number", default=5.0, minimum=0, maximum=100,
          description="a dark's sensor temperature may differ from the light's by this, °C"),
    Param(name="allow_dark_scaling", type="boolean", default=True,
          description="scale a dark of another exposure when none matches (needs a bias)"),
    Param(name="max_flat_age_days", type="integer", default=30, minimum=0, maximum=36500,
          nullable=True, description="a flat may be this many nights older; null: any age"),
)


def _policy(temperature_tolerance: float, allow_dark_scaling: bool,
            max_flat_age_days: int | None) -> MatchPolicy:
    return MatchPolicy(temperature_tolerance_c=float(temperature_tolerance),
                       allow_dark_scaling=allow_dark_scaling,
                       max_flat_age_days=max_flat_age_days)


class CalibrationMethods:
    def __init__(self, app: App) -> None:
        self._app = app

    # --- batches ----------------------------------------------------------------------------

    @rpc_method(
        "start_light_calibration",
        Param(name="inputs", type="array", check=_path_list("inputs"),
              description="absolute paths of lights, or of directories of lights"),
        Param(name="output_dir", type="string", default=None, nullable=True,
              check=lambda v: absolute_path("output_dir", v),
              description="where outputs go; null: beside each light"),
        Param(name="suffix", type="string", default=DEFAULT_SUFFIX,
              max_length=MAX_SUFFIX_LENGTH, check=_suffix,
              description="appended to each light's name"),
        Param(name="dry_run", type="boolean", default=False,
              description="answer with the plan; write nothing"),
        Param(name="overwrite", type="boolean", default=False,
              description="replace existing outputs instead of skipping them"),
        *POLICY_PARAMS,
        Param(name="workers", type="integer", default=None, minimum=1, maximum=256,
              nullable=True, description="frames calibrated at once; null: the CPU count"),
    )
    async def start_light_calibration(
        self, inputs: tuple[Path, ...], output_dir: Path | None, suffix: str, dry_run: bool,
        overwrite: bool, temperature_tolerance: float, allow_dark_scaling: bool,
        max_flat_age_days: int | None, workers: int | None,
    ) -> dict[str, Any]:
        """Calibrate lights with the masters of the library; returns at once with the
        operation id, or, for a dry run, with the plan."""
        app = self._app
        lights = await trio.to_thread.run_sync(_lights, inputs, output_dir, suffix)
        request = LightCalibrationRequest(
            lights=tuple(lights), output_dir=output_dir, suffix=suffix, overwrite=overwrite,
            policy=_policy(temperature_tolerance, allow_dark_scaling, max_flat_age_days),
            workers=workers)
        data_dir = app.data_dir
        if dry_run:
            def plan_only() -> dict[str, Any]:
                plan = plan_light_calibration(data_dir, request, refresh=False)
                return dry_run_summary(plan, run_batch(plan, dry_run=True, overwrite=overwrite))

            plan = await trio.to_thread.run_sync(plan_only)
            return {"operation_id": None, "total": len(lights), "dry_run": True, "plan": plan}
        active = active_operation(app, Kind.LIGHT_CALIBRATION)
        if active is not None:
            raise Refused(f"a light calibration (operation {active.id}) is running; wait for "
                          "it to end or cancel it")

        async def body(handle: OperationHandle) -> dict[str, Any]:
            return await run_light_calibration(handle, data_dir, request)

        snapshot = await app.operations.start(Kind.LIGHT_CALIBRATION, body, details={
            "total": len(lights), "runnable": None, "done": 0, "skipped": 0, "failed": 0,
            "cancelled": 0, "current_file": None, "eta_s": None, "elapsed_s": 0.0,
            "failures": [], "output_dir": None if output_dir is None else str(output_dir),
            "suffix": suffix, "overwrite": overwrite, "workers": workers,
        })
        return {"operation_id": snapshot.id, "total": len(lights), "dry_run": False}

    @rpc_method("get_light_calibration_status", OPERATION_ID)
    def get_light_calibration_status(self, operation_id: int) -> dict[str, Any]:
        """A light calibration's progress: frames done, skipped, failed, the current file and
        the ETA; the per-frame failures; the error when it failed."""
        snapshot = snapshot_of_kind(self._app, operation_id, Kind.LIGHT_CALIBRATION)
        details = snapshot.details
        message = snapshot.message
        counts = [details.get(k, 0) for k in ("done", "skipped", "failed")]
        if snapshot.status == "completed":  # the registry says only "completed"
            message = "completed - {} calibrated, {} skipped, {} failed".format(*counts)
        elif snapshot.status == "cancelled":  # the registry's wording is for builds
            message = (f"cancelled - the {counts[0]} calibrated frames written before the "
                       "cancel are kept")
        out: dict[str, Any] = {
            "operation_id": snapshot.id,
            "status": snapshot.status,
            "status_message": message,
            "progress": float(round(snapshot.progress, 1)),
            **{key: details.get(key) for key in STATUS_MEMBERS},
            "failures": list(details.get("failures", [])),
            "output_dir": details.get("output_dir"),
        }
        if snapshot.error is not None:
            out["error"] = snapshot.error
        return out

    @rpc_method("cancel_light_calibration", OPERATION_ID)
    async def cancel_light_calibration(self, operation_id: int) -> dict[str, Any]:
        """Stop a light calibration: frames being written finish, outputs written stay."""
        return await cancel_and_wait(self._app, operation_id, Kind.LIGHT_CALIBRATION)

    # --- the master library -----------------------------------------------------------------

    @rpc_method("list_calibration_masters",
                Param(name="type", type="string", default=None, nullable=True,
                      choices=LIST_TYPES, attr="frame_type",
                      description="only masters of this type"))
    async def list_calibration_masters(self, frame_type: str | None) -> list[dict[str, Any]]:
        """The masters of the library, each with the state of its file."""
        kind = None if frame_type is None else FrameType(frame_type)
        return await trio.to_thread.run_sync(list_masters, self._app.data_dir, kind)

    @rpc_method(
        "import_calibration_masters",
        Param(name="paths", type="array", check=_path_list("paths"),
              description="absolute paths of master files or directories"),
        Param(name="type", type="string", default=None, nullable=True, choices=IMPORT_TYPES,
              attr="frame_type", description="the type of every image, for headers that "
                                             "do not say"),
        Param(name="recursive", type="boolean", default=False,
              description="also import from subdirectories"),
    )
    async def import_calibration_masters(self, paths: tuple[Path, ...], frame_type: str | None,
                                         recursive: bool) -> dict[str, Any]:
        """Index master files (their headers and checksums); one outcome per file or HDU."""
        kind = None if frame_type is None else FrameType(frame_type)
        data_dir = self._app.data_dir

        def work() -> dict[str, Any]:
            _must_exist("paths", paths)
            outcomes = import_masters(data_dir, paths, frame_type=kind, recursive=recursive)
            counts = {s.value: sum(1 for o in outcomes if o.status is s) for s in ImportStatus}
            return {"outcomes": [o.to_json() for o in outcomes], "counts": counts}

        return await trio.to_thread.run_sync(work)

    @rpc_method(
        "match_calibration_masters",
        Param(name="light", type="string", check=lambda v: absolute_path("light", v),
              description="absolute path of a light"),
        *POLICY_PARAMS,
    )
    async def match_calibration_masters(self, light: Path, temperature_tolerance: float,
                                        allow_dark_scaling: bool,
                                        max_flat_age_days: int | None) -> dict[str, Any]:
        """The bias, dark and flat chosen for a light, and every rejected master with the
        reason it lost."""
        policy = _policy(temperature_tolerance, allow_dark_scaling, max_flat_age_days)
        data_dir = self._app.data_dir

        def work() -> dict[str, Any]:
            _must_exist("light", (light,))
            try:
                return match_light(data_dir, light, policy)
            except NotALight as exc:
                raise InvalidParams(f"invalid light: {exc.message}", param="light") from None

        return await trio.to_thread.run_sync(work)

    @rpc_method("remove_calibration_master",
                Param(name="id", type="integer", minimum=1, attr="master_id",
                      description="the master's id (from list_calibration_masters)"))
    async def remove_calibration_master(self, master_id: int) -> dict[str, Any]:
        """Forget a master (its file is left alone); returns the record removed."""
        data_dir = self._app.data_dir

        def work() -> dict[str, Any]:
            try:
                return remove_master(data_dir, master_id).to_json()
            except UnknownMaster:
                raise InvalidParams(f"invalid id: no calibration master has id {master_id}",
                                    param="id") from None

        return await trio.to_thread.run_sync(work)


def _lights(inputs: tuple[Path, ...], output_dir: Path | None, suffix: str) -> list[Path]:
    """The lights to calibrate (blocking: stats and directory listings)."""
    _must_exist("inputs", inputs)
    if output_dir is not None and output_dir.exists() and not output_dir.is_dir():
        raise InvalidParams(f"invalid output_dir: {output_dir} is not a directory",
                            param="output_dir")
    lights = expand_inputs(inputs, suffix)
    if not lights:
        raise InvalidParams("invalid inputs: no FITS files in the directories given",
                            param="inputs")
    return lights

