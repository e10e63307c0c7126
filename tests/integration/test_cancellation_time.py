"""How fast a cancel takes effect, measured in virtual time (trio's autojump clock).

Simulated exposures are ``trio.sleep`` calls, so under the mock clock a 15 s dark costs no
real time and the time between the cancel request and the end of the operation is exact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from phdserver.app import App
from phdserver.rpc import decode_line
from tests.support import make_config


async def rpc(app: App, method: str, params: Any = None) -> Any:
    line = orjson.dumps({"method": method, "params": params, "id": 1})
    reply = orjson.loads(await app.dispatcher.run(decode_line(line)))
    assert "error" not in reply, reply
    return reply["result"]


@pytest.fixture
def patient_clock() -> trio.testing.MockClock:
    """Virtual time that jumps only after 50 ms of real idleness.

    Frames are stacked in worker threads; with a threshold of 0 the clock would jump to the
    next deadline while a thread runs (the event loop looks idle), firing timeouts early.
    """
    return trio.testing.MockClock(autojump_threshold=0.05)


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    app = App(make_config(tmp_path, time_scale=1.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(app.operations.run)
        await nursery.start(app.equipment.run)
        await nursery.start(app.capture.run)
        yield app
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("kind", ["dark_library", "defect_map"])
async def test_cancel_takes_effect_within_a_second_of_virtual_time(
    app: App, patient_clock: trio.testing.MockClock, kind: str
) -> None:
    await rpc(app, "set_connected", [True])
    if kind == "dark_library":
        started = await rpc(app, "start_dark_library_build",
                            {"exposures": [15000, 30000], "frame_count": 5})
    else:
        started = await rpc(app, "start_defect_map_build",
                            {"exposure_time": 30000, "frame_count": 10})
    op_id = started["operation_id"]
    await trio.sleep(40)  # virtual: the build is now in the middle of an exposure
    assert app.operations.get(op_id).status == "capturing_darks"
    camera = app.equipment.camera
    aborts = camera.abort_count
    requested = trio.current_time()
    result = await rpc(app, "cancel_operation", {"operation_id": op_id})
    ended = trio.current_time()
    assert result == {"operation_id": op_id, "cancelled": True, "status": "cancelled"}
    assert ended - requested < 1.0
    assert camera.abort_count == aborts + 1
    assert app.lock.holder is None
    assert not app.calibration_paths.dark_library.exists()
    assert not app.calibration_paths.defect_map.exists()
