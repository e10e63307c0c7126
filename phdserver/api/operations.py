"""Generic operation methods, and the helpers the per-kind methods share.

A build is started in three steps that never wait between the check and the hold: check the
camera is connected, reserve an operation id and take the camera lock naming that id, then
register and start the operation (which releases the lock however it ends). Before the check, a
start waits (at most 5 s, ``CaptureService.wait_stopped``) for looping that ``stop_capture`` is
still ending, so "stop_capture, then start a build" works every time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from phdserver.errors import InvalidParams, Refused
from phdserver.operations import CameraHolder, Kind, OperationSnapshot
from phdserver.operations.registry import OperationHandle

from ._params import Param
from ._registry import rpc_method

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from phdserver.app import App

__all__ = ["OPERATION_ID", "OperationMethods", "cancel_and_wait", "start_camera_operation"]

OPERATION_ID = Param(name="operation_id", type="integer", minimum=1)
CANCEL_WAIT_S = 2.0

KIND_LABELS = {
    Kind.DARK_LIBRARY: "dark library build",
    Kind.DEFECT_MAP: "defect map build",
    Kind.LIGHT_CALIBRATION: "light calibration",
}


async def start_camera_operation(
    app: App,
    kind: Kind,
    body: Callable[[OperationHandle], Awaitable[dict[str, Any] | None]],
    details: dict[str, Any],
) -> OperationSnapshot:
    """Start an operation that holds the camera for its whole run."""
    await app.capture.wait_stopped()
    if not app.equipment.connected:
        raise Refused("camera not connected")
    label = KIND_LABELS[kind]
    # Name the id in the lock before consuming it, so a refused start uses up no id.
    holder = CameraHolder(description=label, operation_id=app.operations.next_id)
    try:
        app.lock.acquire(holder)
    except Refused as exc:
        raise Refused(f"cannot start the {label}: {exc.message}") from None
    op_id = app.operations.reserve_id()

    async def runner(handle: OperationHandle) -> dict[str, Any] | None:
        with app.lock.holding(holder):
            return await body(handle)

    try:
        return await app.operations.start(kind, runner, op_id=op_id, details=details)
    except BaseException:
        app.lock.release(holder)
        raise


def snapshot_of_kind(app: App, op_id: int, kind: Kind) -> OperationSnapshot:
    snapshot = app.operations.get(op_id)
    if snapshot.kind != kind:
        raise InvalidParams(
            f"invalid operation_id: operation {op_id} is a {snapshot.kind} operation, "
            f"not a {kind} one", param="operation_id")
    return snapshot


async def cancel_and_wait(app: App, op_id: int, kind: Kind | None = None) -> dict[str, Any]:
    """Cancel, then wait (briefly) for the operation to end so the reply says how it ended.

    With ``kind``, an id of another kind of operation is an invalid parameter.
    """
    snapshot = app.operations.get(op_id) if kind is None else snapshot_of_kind(app, op_id, kind)
    if snapshot.done:
        return {"operation_id": op_id, "cancelled": False, "status": snapshot.status}
    app.operations.cancel(op_id)
    with trio.move_on_after(CANCEL_WAIT_S):
        snapshot = await app.operations.wait_finished(op_id)
    # A cancel that arrives while the result is being saved lets the save finish.
    cancelled = snapshot.status == "cancelled" or not snapshot.done
    return {"operation_id": op_id, "cancelled": cancelled, "status": snapshot.status}


def active_operation(app: App, kind: Kind) -> OperationSnapshot | None:
    running = app.operations.running(kind)
    return running[0] if running else None


class OperationMethods:
    def __init__(self, app: App) -> None:
        self._app = app

    @rpc_method("list_operations")
    def list_operations(self) -> list[dict[str, Any]]:
        """Every operation still known (running ones and the last 200 finished), oldest first."""
        return [s.to_json() for s in self._app.operations.list()]

    @rpc_method("get_operation", OPERATION_ID)
    def get_operation(self, operation_id: int) -> dict[str, Any]:
        """One operation's state, progress, message and details."""
        return self._app.operations.get(operation_id).to_json()

    @rpc_method("cancel_operation", OPERATION_ID)
    async def cancel_operation(self, operation_id: int) -> dict[str, Any]:
        """Cancel any operation; ``cancelled`` is false when it had already ended."""
        return await cancel_and_wait(self._app, operation_id)
