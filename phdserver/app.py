"""Wires the daemon together and owns the application state.

Data flows one way: transport → dispatch → method handlers (``api/``) → operations, capture and
equipment → cameras and imaging → library files. Events flow back through the one event bus.
:class:`App` holds the pieces, answers "what state are we in" (PHD2's ``AppState``), and runs
their background tasks under one nursery in :meth:`App.serve`.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import trio

from phdserver import __version__
from phdserver.api import build_method_table
from phdserver.cameras.factory import create_camera
from phdserver.config import Config, Profile
from phdserver.errors import Refused
from phdserver.imaging import warm_up
from phdserver.library import CalibrationPaths, MastersDB
from phdserver.library.atomic import remove_stale_temp_files
from phdserver.operations import (
    BuildContext,
    CameraLock,
    CaptureService,
    Equipment,
    FilePresence,
    LoadedCalibration,
    OperationRegistry,
)
from phdserver.operations.equipment import CameraFactory
from phdserver.rpc import Connections, Dispatcher, EventBus, ServerLimits, serve_event_server
from phdserver.rpc.events import Alert, AppState, Event, Version

__all__ = ["App"]


class App:
    def __init__(
        self,
        config: Config,
        *,
        camera_factory: CameraFactory | None = None,
        host_name: str | None = None,
        clock: Callable[[], float] = time.time,
        logger: Any = None,
        files: FilePresence | None = None,
    ) -> None:
        self.config = config
        self.log = logger if logger is not None else structlog.get_logger("phdserver")
        self.bus = EventBus(instance=config.server.instance, host=host_name, clock=clock)
        self.lock = CameraLock()
        self._profile_id = config.selected_profile_id
        factory = camera_factory or (lambda settings: create_camera(settings, self.alert))
        self.equipment = Equipment(profile=config.selected_profile, camera_factory=factory,
                                   publish=self.publish, logger=self.log.bind(part="camera"))
        self.files = files or FilePresence(logger=self.log.bind(part="files"))
        """What is known about the profile's library files (status polls never stat)."""
        self.calibration = LoadedCalibration(self.publish, self.log.bind(part="calibration"))
        self.capture = CaptureService(equipment=self.equipment, lock=self.lock,
                                      calibration=self.calibration, publish=self.publish,
                                      logger=self.log.bind(part="capture"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.operations = OperationRegistry(self.data_dir / "operations.json", self.publish,
                                            self.log.bind(part="operations"))
        self.dispatcher = Dispatcher(build_method_table(self), self.log.bind(part="rpc"))
        self.shutdown_requested = trio.Event()
        self.connections = Connections()

    # -- basic facts -----------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    @property
    def instance(self) -> int:
        return self.config.server.instance

    @property
    def version(self) -> str:
        return __version__

    @property
    def creator(self) -> str:
        return f"phdserver {__version__}"

    @property
    def profile(self) -> Profile:
        return self.equipment.profile

    @property
    def profiles(self) -> tuple[Profile, ...]:
        return self.config.profiles

    @property
    def state(self) -> str:
        """PHD2's app state. Without guiding, only Stopped and Looping occur."""
        return "Looping" if self.capture.looping else "Stopped"

    @property
    def calibration_paths(self) -> CalibrationPaths:
        return CalibrationPaths(data_dir=self.data_dir, instance=self.instance,
                                profile_id=self.profile.id)

    def publish(self, event: Event) -> None:
        self.bus.publish(event)

    def alert(self, message: str, kind: str = "info") -> None:
        self.publish(Alert(Msg=message, Type=kind))

    def greeting(self) -> list[Event]:
        """The catch-up events a new client gets: Version first, AppState last."""
        return [Version(), AppState(State=self.state)]

    # -- equipment -------------------------------------------------------------------------
    def select_profile(self, profile_id: int) -> None:
        profile = self.config.profile(profile_id)
        self.equipment.set_profile(profile)
        self.calibration.clear_all()
        self._profile_id = profile_id

    async def connect(self) -> None:
        await self.equipment.connect()
        profile = self.profile
        await self.calibration.auto_load(
            self.calibration_paths, self.equipment.info, profile.binning,
            defect_map=profile.auto_load_defect_map, darks=profile.auto_load_darks,
        )

    async def disconnect(self) -> None:
        holder = self.lock.holder
        if holder is not None and not self.capture.looping:
            raise Refused(f"cannot disconnect while {holder} is using the camera")
        self.capture.stop()
        await self.equipment.disconnect()
        self.calibration.clear_all()

    def build_context(self) -> BuildContext:
        return BuildContext(
            camera=self.equipment.camera,
            info=self.equipment.info,
            profile=self.profile,
            paths=self.calibration_paths,
            calibration=self.calibration,
            publish=self.publish,
            spool_dir=self.data_dir / "spool",
            creator=self.creator,
            register=self._register_master_file,
        )

    def _register_master_file(self, path: Path) -> None:
        """Index a dark library or defect map this daemon saved (runs in a worker thread)."""
        with MastersDB.in_data_dir(self.data_dir) as db:
            if path.suffix == ".txt":
                db.register_defect_map(path)
            else:
                db.register_dark_library(path)

    # -- running ---------------------------------------------------------------------------
    async def serve(
        self, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the event server and every background service until cancelled or shut down."""
        server = self.config.server
        await trio.to_thread.run_sync(self._clean_data_dir)
        # numba compiles (or loads its cache) holding the GIL: do it before serving anyone.
        await trio.to_thread.run_sync(warm_up)
        # Everything imported and compiled so far lives as long as the process. Freezing it
        # keeps the garbage collector from rescanning it: a full collection of the unfrozen
        # heap took 75 ms here, stalling the event loop (and every thread) that long.
        gc.collect()
        gc.freeze()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.operations.run)
            await nursery.start(self.equipment.run)
            await nursery.start(self.capture.run)
            listeners = await nursery.start(
                lambda task_status: serve_event_server(
                    self.dispatcher, self.bus, self.greeting,
                    host=server.listen, port=server.effective_port,
                    limits=ServerLimits(max_line=server.max_line), allow=server.allow,
                    connections=self.connections, logger=self.log.bind(part="rpc"),
                    task_status=task_status,
                )
            )
            for listener in listeners:
                self.log.info("listening", address=listener.socket.getsockname()[:2])
            task_status.started(listeners)
            await self.shutdown_requested.wait()
            self.log.info("shutting down")
            # The reply to `shutdown` (and anything else queued) goes out first.
            await self.connections.flush_all(timeout_s=2)
            self.capture.stop()
            with trio.move_on_after(5) as scope:
                scope.shield = True
                await self.equipment.disconnect()
            nursery.cancel_scope.cancel()

    def _clean_data_dir(self) -> None:
        directory = self.calibration_paths.directory
        if directory.exists():
            leftovers = [*remove_stale_temp_files(directory)]
            for staged in directory.glob(".*.staged"):
                staged.unlink(missing_ok=True)
                leftovers.append(staged)
            for path in leftovers:
                self.log.warning("removed a temporary file left by an interrupted save",
                                 path=str(path))
        spool = self.data_dir / "spool"
        if spool.exists():
            for leftover in spool.glob(".spool-*"):
                leftover.unlink(missing_ok=True)
