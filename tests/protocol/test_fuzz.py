"""Hypothesis throws garbage and wrong-typed calls at a live server over TCP.

After every fuzzed line a sentinel request must get its normal reply, every line the server
wrote must be one CRLF-terminated JSON value, no reply may be an internal error, and a second
client must keep working. The real method table is fuzzed too, with random parameters
(``shutdown`` excepted, which would end the test's server).
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phdserver.app import App
from tests.support import SyncClient

ALLOWED_CODES = {-32700, -32600, -32601, -32602, -32603, 1, 2}

json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)


@st.composite
def fuzz_lines(draw: st.DrawFn, methods: list[str]) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "call", "batch"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200)).replace(b"\n", b" ")
    if kind == "json":
        return _dumps(draw(json_values))
    request: dict[str, Any] = {"method": draw(st.sampled_from(methods) | st.text(max_size=10))}
    if draw(st.booleans()):
        request["id"] = draw(json_scalars)
    if draw(st.booleans()):
        request["params"] = draw(st.lists(json_values, max_size=4)
                                 | st.dictionaries(st.sampled_from(PARAM_NAMES), json_values,
                                                   max_size=4)
                                 | json_scalars)
    if kind == "batch":
        return _dumps([request, request])
    return _dumps(request)


def _dumps(value: Any) -> bytes:
    """Standard-library JSON: it writes integers of any size, as clients may."""
    return json.dumps(value, separators=(",", ":")).encode()


PARAM_NAMES = ["operation_id", "exposure", "connected", "min_exposure", "max_exposure",
               "frame_count", "notes", "exposures", "combine", "exposure_time", "roi",
               "subframe", "path", "save", "settle", "id", "enabled", "hot_aggressiveness"]


def check_line(line: bytes) -> None:
    assert line.endswith(b"\r\n"), line
    message = orjson.loads(line)
    replies = message if isinstance(message, list) else [message]
    for reply in replies:
        if "Event" in reply:
            assert "jsonrpc" not in reply
            assert all(v is not None for v in reply.values()), reply
            continue
        assert reply["jsonrpc"] == "2.0"
        if "error" in reply:
            assert reply["error"]["code"] in ALLOWED_CODES, reply
            assert "internal error" not in reply["error"]["message"], reply


# The method list is fixed by the code; build it once without a server.
METHODS = sorted({
    "get_app_state", "get_connected", "set_connected", "get_profiles", "get_profile",
    "set_profile", "get_current_equipment", "get_exposure", "set_exposure",
    "get_exposure_durations", "get_camera_frame_size", "get_camera_binning", "get_pixel_scale",
    "loop", "stop_capture", "capture_single_frame", "save_image", "get_cooler_status",
    "set_cooler_state", "get_ccd_temperature", "guide", "dither", "find_star", "set_paused",
    "get_lock_shift_params", "set_lock_shift_params", "get_star_image", "guide_pulse",
    "start_dark_library_build", "get_dark_library_status", "cancel_dark_library_build",
    "load_dark_library", "clear_dark_library", "start_defect_map_build",
    "get_defect_map_build_status", "cancel_defect_map_build", "get_defect_map_status",
    "load_defect_map", "clear_defect_map", "refine_defect_map", "list_operations",
    "get_operation", "cancel_operation", "set_limit_frame", "get_limit_frame",
})


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lines=st.lists(fuzz_lines(METHODS), min_size=1, max_size=5))
def test_fuzzed_lines_never_hurt(live_server: int, lines: list[bytes]) -> None:
    client = SyncClient(live_server)
    payload = b"".join(line + b"\r\n" for line in lines)
    payload += b'{"method":"get_exposure_durations","id":"sentinel"}\r\n'
    client.sock.sendall(payload)
    while True:
        line = client.read_line()
        check_line(line)
        message = orjson.loads(line)
        if isinstance(message, dict) and message.get("id") == "sentinel":
            assert message["result"][-1] == 30000
            break
    bystander = SyncClient(live_server)
    assert bystander.call("get_profile") == {"id": 1, "name": "Simulator"}
    client.sock.close()
    bystander.sock.close()


async def test_fuzz_covers_the_real_method_table(server: tuple[App, int]) -> None:
    app, _ = server
    assert set(METHODS) <= app.dispatcher.method_names
