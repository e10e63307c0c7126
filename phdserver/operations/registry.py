"""The registry of long-running operations: ids, states, progress, cancellation and history.

Policies:

* **Ids** are positive integers, unique for the lifetime of the data directory: the counter is
  saved (atomically) before an id is handed out, so an id polled after a restart never means
  another operation. The last :data:`HISTORY_LIMIT` finished operations stay queryable.
* **Ownership.** The registry owns the one nursery operations run in (the visible exception to
  "every task has a parent nursery the caller opened"): :meth:`OperationRegistry.run` must be
  started by the app before :meth:`start` is called.
* **Cancellation.** Each operation runs inside its own ``CancelScope``; cancelling is
  ``scope.cancel()``, and the runner's ``finally`` blocks do their cleanup (abort the exposure,
  drop temp files) under short shielded timeouts, so a cancel takes effect within a second.
* **Failures.** A :class:`~phdserver.errors.PhdError` from a runner fails the operation with its
  message; an ``OSError`` (a full disk, a missing folder) fails it with the system's words and
  the file's name; any other exception fails it with "internal error" and is logged with a
  traceback.
  Either way the server carries on.
* **Events.** ``OperationProgress`` on each status change, and for progress alone at most twice a
  second; ``OperationFinished`` once, at the end.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import structlog
import trio

from phdserver.errors import InvalidParams, PhdError
from phdserver.library.atomic import atomic_write_bytes
from phdserver.rpc.events import Event, OperationFinished, OperationProgress

from ._background import BackgroundTasks
from .lifecycle import (
    CANCELLED,
    CANCELLED_MESSAGES,
    COMPLETED,
    FAILED,
    TERMINAL,
    IllegalTransition,
    Kind,
    check_transition,
)

__all__ = [
    "HISTORY_LIMIT",
    "OperationHandle",
    "OperationRegistry",
    "OperationSnapshot",
    "Runner",
]

HISTORY_LIMIT = 200
PROGRESS_INTERVAL_S = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationSnapshot:
    """What a client can know about an operation at one moment."""

    id: int
    kind: str
    status: str
    progress: float
    message: str
    created: float
    finished: float | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "operation_id": self.id,
            "kind": self.kind,
            "status": self.status,
            "progress": float(round(self.progress, 1)),
            "status_message": self.message,
            "created": round(self.created, 3),
            "details": self.details,
        }
        if self.finished is not None:
            out["finished"] = round(self.finished, 3)
        if self.error is not None:
            out["error"] = self.error
        return out

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> OperationSnapshot:
        return cls(
            id=int(document["operation_id"]),
            kind=str(document["kind"]),
            status=str(document["status"]),
            progress=float(document["progress"]),
            message=str(document["status_message"]),
            created=float(document["created"]),
            finished=document.get("finished"),
            error=document.get("error"),
            details=dict(document.get("details", {})),
        )


class OperationHandle:
    """What a runner uses to report: status changes, progress and details."""

    def __init__(self, registry: OperationRegistry, snapshot: OperationSnapshot) -> None:
        self._registry = registry
        self._snapshot = snapshot
        self._last_emit = -1e9
        self._last_emitted: OperationSnapshot | None = None
        self._flush_pending = False
        self.scope = trio.CancelScope()
        self.finished = trio.Event()
        self.log = registry.log.bind(op_id=snapshot.id, kind=snapshot.kind)

    @property
    def id(self) -> int:
        return self._snapshot.id

    @property
    def snapshot(self) -> OperationSnapshot:
        return self._snapshot

    def set_status(self, status: str, message: str, progress: float | None = None) -> None:
        """Move to a new stage (checked against the lifecycle table); always announced."""
        old = self._snapshot
        check_transition(Kind(old.kind), old.status, status)
        self._update(status=status, message=message, progress=progress)
        self.log.info("operation status", status=status, message=message)
        self._emit_progress()

    def update(self, *, progress: float | None = None, message: str | None = None,
               **details: Any) -> None:
        """Report progress within a stage; announced at most twice a second.

        An update that comes too soon after the last announcement is announced at the end of
        the interval instead (trailing edge), so the latest message is never left unsent
        while a long exposure runs.
        """
        self._update(progress=progress, message=message, **details)
        wait = self._last_emit + PROGRESS_INTERVAL_S - trio.current_time()
        if wait <= 0:
            self._emit_progress()
        elif not self._flush_pending:
            self._flush_pending = True
            self._registry.call_later(wait, self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        if self._snapshot.status not in TERMINAL and self._snapshot != self._last_emitted:
            self._emit_progress()

    def _update(self, *, status: str | None = None, message: str | None = None,
                progress: float | None = None, **details: Any) -> None:
        old = self._snapshot
        new_progress = float(old.progress if progress is None
                             else max(old.progress, min(progress, 100)))
        if status != COMPLETED and new_progress >= 100:
            new_progress = 99.9
        merged = {**old.details, **details} if details else old.details
        self._snapshot = OperationSnapshot(
            id=old.id,
            kind=old.kind,
            status=status or old.status,
            progress=new_progress,
            message=old.message if message is None else message,
            created=old.created,
            details=merged,
        )

    def _emit_progress(self) -> None:
        self._last_emit = trio.current_time()
        s = self._last_emitted = self._snapshot
        self._registry.publish(
            OperationProgress(
                OperationId=s.id, Kind=s.kind, Status=s.status,
                Progress=float(round(s.progress, 1)), Message=s.message,
            )
        )

    def _finish(self, status: str, message: str, error: str | None,
                result: dict[str, Any] | None) -> OperationSnapshot:
        old = self._snapshot
        try:
            check_transition(Kind(old.kind), old.status, status)
        except IllegalTransition:
            self.log.exception("runner ended in an impossible state")
            status, message = FAILED, "failed: internal error"
            error = f"internal error: ended in {old.status} without finishing"
        self._snapshot = OperationSnapshot(
            id=old.id,
            kind=old.kind,
            status=status,
            progress=100.0 if status == COMPLETED else old.progress,
            message=message,
            created=old.created,
            finished=time.time(),
            error=error,
            details={**old.details, **(result or {})},
        )
        return self._snapshot


Runner = Callable[[OperationHandle], Awaitable[dict[str, Any] | None]]
"""An operation body: reports through the handle, returns result details on success."""


class OperationRegistry:
    def __init__(self, state_file: Path, publish: Callable[[Event], None],
                 logger: Any = None) -> None:
        self._state_file = state_file
        self.publish = publish
        self.log = logger if logger is not None else structlog.get_logger("phdserver.operations")
        self._running: dict[int, OperationHandle] = {}
        self._history: dict[int, OperationSnapshot] = {}
        self._next_id = 1
        self._tasks = BackgroundTasks()
        self._save_lock = trio.Lock()
        self._load()

    # -- persistence ---------------------------------------------------------------------
    def _load(self) -> None:
        try:
            document = orjson.loads(self._state_file.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, orjson.JSONDecodeError) as exc:
            self.log.warning("operation history unreadable; starting afresh",
                             path=str(self._state_file), error=str(exc))
            # Never reuse ids that may have been handed out: skip well past any.
            self._next_id = int(time.time())
            return
        self._next_id = max(1, int(document.get("next_id", 1)))
        for item in document.get("history", []):
            try:
                snapshot = OperationSnapshot.from_json(item)
            except (KeyError, TypeError, ValueError):
                continue
            if not snapshot.done:  # it was running when the server stopped
                snapshot = OperationSnapshot(
                    id=snapshot.id, kind=snapshot.kind, status=FAILED,
                    progress=snapshot.progress, message="interrupted: the server stopped",
                    created=snapshot.created, finished=snapshot.finished,
                    error="interrupted: the server stopped while it ran",
                    details=snapshot.details,
                )
            self._history[snapshot.id] = snapshot

    def _document(self) -> bytes:
        items = [s.to_json() for s in self._all_snapshots()][-HISTORY_LIMIT:]
        return orjson.dumps({"next_id": self._next_id, "history": items},
                            option=orjson.OPT_INDENT_2)

    async def _save(self) -> None:
        async with self._save_lock:
            data = self._document()
            await trio.to_thread.run_sync(atomic_write_bytes, self._state_file, data)

    # -- running -------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery this service starts its tasks in, until cancelled."""
        await self._tasks.run(task_status=task_status)

    @property
    def next_id(self) -> int:
        """The id the next :meth:`reserve_id` will hand out."""
        return self._next_id

    def call_later(self, delay_s: float, function: Callable[[], None]) -> None:
        """Run ``function`` after ``delay_s`` seconds in the registry's nursery."""
        nursery = self._tasks.nursery
        if nursery is None:
            return

        async def later() -> None:
            await trio.sleep(delay_s)
            function()

        nursery.start_soon(later)

    def reserve_id(self) -> int:
        """Hand out the next id (persisted by the :meth:`start` that uses it)."""
        op_id = self._next_id
        self._next_id += 1
        return op_id

    async def start(self, kind: Kind, runner: Runner, *, op_id: int | None = None,
                    message: str = "starting",
                    details: dict[str, Any] | None = None) -> OperationSnapshot:
        """Register an operation, persist its id, and start it in the background."""
        nursery = self._tasks.nursery
        if nursery is None:
            raise RuntimeError("the operation registry is not running")
        if op_id is None:
            op_id = self.reserve_id()
        snapshot = OperationSnapshot(
            id=op_id, kind=str(kind), status="starting", progress=0.0, message=message,
            created=time.time(), details=dict(details or {}),
        )
        handle = OperationHandle(self, snapshot)
        self._running[op_id] = handle
        await self._save()
        handle.log.info("operation started")
        handle._emit_progress()
        nursery.start_soon(self._execute, handle, runner)
        return snapshot

    async def _execute(self, handle: OperationHandle, runner: Runner) -> None:
        outcome: tuple[str, str, str | None] = (FAILED, "failed", "server stopped")
        result: dict[str, Any] | None = None
        try:
            with handle.scope:
                try:
                    result = await runner(handle)
                except PhdError as exc:
                    outcome = (FAILED, f"failed: {exc.message}", exc.message)
                except OSError as exc:
                    # A full disk or a vanished folder is the operator's to fix, not a bug.
                    handle.log.error("operation failed on a file", error=str(exc))
                    described = describe_os_error(exc)
                    outcome = (FAILED, f"failed: {described}", described)
                except Exception as exc:
                    handle.log.exception("operation crashed")
                    outcome = (FAILED, "failed: internal error", f"internal error: {exc!r}")
                else:
                    outcome = (COMPLETED, "completed", None)
            if handle.scope.cancelled_caught:
                outcome = (CANCELLED, CANCELLED_MESSAGES[Kind(handle.snapshot.kind)], None)
                result = None
        finally:
            status, message, error = outcome
            final = handle._finish(status, message, error, result)
            self._running.pop(handle.id, None)
            self._history[handle.id] = final
            handle.log.info("operation finished", status=status, error=error)
            self.publish(OperationProgress(
                OperationId=final.id, Kind=final.kind, Status=final.status,
                Progress=float(round(final.progress, 1)), Message=final.message,
            ))
            self.publish(OperationFinished(
                OperationId=final.id, Kind=final.kind, Status=final.status, Error=final.error,
            ))
            handle.finished.set()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._save()

    # -- queries -------------------------------------------------------------------------
    def _all_snapshots(self) -> list[OperationSnapshot]:
        merged = dict(self._history)
        merged.update({op_id: h.snapshot for op_id, h in self._running.items()})
        return [merged[k] for k in sorted(merged)]

    def get(self, op_id: int) -> OperationSnapshot:
        """The operation's current snapshot; unknown ids are invalid params."""
        handle = self._running.get(op_id)
        if handle is not None:
            return handle.snapshot
        snapshot = self._history.get(op_id)
        if snapshot is None:
            raise InvalidParams(f"invalid operation_id: no operation {op_id}",
                                param="operation_id")
        return snapshot

    def list(self) -> list[OperationSnapshot]:
        return self._all_snapshots()

    def running(self, kind: Kind | None = None) -> list[OperationSnapshot]:
        return [h.snapshot for h in self._running.values()
                if kind is None or h.snapshot.kind == kind]

    def cancel(self, op_id: int) -> OperationSnapshot:
        """Request cancellation; returns the snapshot (already final if it had ended)."""
        handle = self._running.get(op_id)
        if handle is None:
            return self.get(op_id)
        handle.log.info("operation cancel requested")
        handle.scope.cancel()
        return handle.snapshot

    async def wait_finished(self, op_id: int) -> OperationSnapshot:
        """Wait until the operation ends (for tests and the CLI's in-process use)."""
        handle = self._running.get(op_id)
        if handle is not None:
            await handle.finished.wait()
        return self.get(op_id)


def describe_os_error(exc: OSError) -> str:
    """``No space left on device: /path/file`` rather than ``[Errno 28] ...`` or a repr."""
    what = exc.strerror or str(exc) or type(exc).__name__
    return f"{what}: {exc.filename}" if exc.filename else what
