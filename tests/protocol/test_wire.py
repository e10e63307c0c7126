"""The wire protocol over real TCP, checked against real PHD2's lines
(reference/phd2-transcript.md): greeting, replies, errors, batches, limits, ordering."""

from __future__ import annotations

import orjson
import pytest
import trio

from phdserver.app import App
from tests.support import LineClient


async def test_greeting_is_version_then_appstate(server: tuple[App, int]) -> None:
    _, port = server
    client = await LineClient.connect(port, read_greeting=False)
    version = await client.read_message()
    state = await client.read_message()
    assert list(version)[:4] == ["Event", "Timestamp", "Host", "Inst"]
    assert version["Event"] == "Version"
    assert version["PHDVersion"] == "2.6.13"
    assert version["OverlapSupport"] is True
    assert version["MsgVersion"] == 1
    assert version["Inst"] == 1
    assert round(version["Timestamp"], 3) == version["Timestamp"]
    assert state == {**{k: state[k] for k in ("Event", "Timestamp", "Host", "Inst")},
                     "State": "Stopped"}
    assert all(line.endswith(b"\r\n") for line in client.raw_lines)
    await client.aclose()


async def test_replies_echo_ids_verbatim(client: LineClient) -> None:
    for raw_id in (b"7", b'"a-guid"', b"1.5", b'{"a":1}', b"null", b"123456789012345678901234"):
        await client.send_raw(b'{"method":"get_app_state","id":' + raw_id + b"}\r\n")
        line = await client.read_line()
        assert line == b'{"jsonrpc":"2.0","result":"Stopped","id":' + raw_id + b"}\r\n"


async def test_notifications_get_no_reply(client: LineClient) -> None:
    await client.send_raw(b'{"method":"get_app_state"}\r\n{"method":"no_such_method"}\r\n'
                          b'[{"method":"get_paused"}]\r\n[]\r\n')
    await client.send_raw(b'{"method":"get_exposure","id":99}\r\n')
    assert await client.read_message() == {"jsonrpc": "2.0", "result": 0, "id": 99}


async def test_errors_before_dispatch_have_null_ids(client: LineClient) -> None:
    cases = [
        (b"{this is not json\r\n", -32700),
        (b"\r\n", -32700),
        (b'{"id":301}\r\n', -32600),
        (b'{"method":"get_exposure","params":5,"id":302}\r\n', -32600),
    ]
    for request, code in cases:
        await client.send_raw(request)
        reply = await client.read_message()
        assert reply["error"]["code"] == code
        assert reply["id"] is None


async def test_unknown_method(client: LineClient) -> None:
    assert await client.error("no_such_method") == {"code": -32601, "message": "method not found"}


async def test_batch_reply_is_one_line(client: LineClient) -> None:
    await client.send_raw(b'[{"method":"get_app_state","id":201},'
                          b'{"method":"get_exposure","id":202},'
                          b'{"method":"get_paused"},{"method":"nope","id":"x"}]\r\n')
    line = await client.read_line()
    assert orjson.loads(line) == [
        {"jsonrpc": "2.0", "result": "Stopped", "id": 201},
        {"jsonrpc": "2.0", "result": 0, "id": 202},
        {"jsonrpc": "2.0", "error": {"code": -32601, "message": "method not found"}, "id": "x"},
    ]


async def test_bare_lf_split_and_pipelined_requests(client: LineClient) -> None:
    await client.send_raw(b'{"method":"get_app_state","id":1}\n{"method":"get_exposure"')
    assert (await client.read_message())["id"] == 1
    await client.send_raw(b',"id":2}\r\n{"method":"get_paused","id":3}\r\n')
    assert (await client.read_message())["id"] == 2
    assert (await client.read_message()) == {"jsonrpc": "2.0", "result": False, "id": 3}


async def test_a_10_mb_line_gets_one_error_and_the_connection_lives(client: LineClient) -> None:
    chunk = b"x" * 65536
    await client.send_raw(b'{"method":"get_app_state","params":["')
    for _ in range(160):
        await client.send_raw(chunk)
    await client.send_raw(b'"],"id":401}\r\n{"method":"get_app_state","id":63}\r\n')
    too_big = await client.read_message()
    assert too_big["error"]["code"] == -32603
    assert too_big["error"]["message"].startswith("too big")
    assert too_big["id"] is None
    assert await client.read_message() == {"jsonrpc": "2.0", "result": "Stopped", "id": 63}


async def test_request_sent_byte_by_byte(client: LineClient) -> None:
    for byte in b'{"method":"get_exposure_durations","id":"b"}\r\n':
        await client.send_raw(bytes([byte]))
    reply = await client.read_message()
    assert reply["id"] == "b"
    assert reply["result"][-1] == 30000


async def test_invalid_params_name_the_parameter(client: LineClient) -> None:
    error = await client.error("set_exposure", ["abc"])
    assert error["code"] == -32602
    assert "exposure" in error["message"]
    error = await client.error("set_exposure", [123457])
    assert error == {"code": 1, "message": "could not set exposure duration"}


async def test_set_exposure_events_come_before_the_reply(client: LineClient) -> None:
    await client.call("set_connected", [True])
    await client.send_raw(b'{"method":"set_exposure","params":[2000],"id":67}\r\n')
    first = await client.read_message()
    second = await client.read_message()
    third = await client.read_message()
    assert first["Event"] == "GuideParamChange"
    assert first["Name"] == "Exposure"
    assert first["Value"] == "2000 ms"
    assert second["Event"] == "ConfigurationChange"
    assert third == {"jsonrpc": "2.0", "result": 0, "id": 67}
    assert await client.call("get_exposure") == 2000


async def test_a_slow_reader_does_not_stall_other_clients(server: tuple[App, int]) -> None:
    _, port = server
    slow = await LineClient.connect(port)
    fast = await LineClient.connect(port)
    # The slow client pipelines requests and never reads its replies.
    request = b'{"method":"get_exposure_durations","id":1}\r\n' * 2000
    with trio.move_on_after(2):
        for _ in range(50):
            await slow.send_raw(request)
    for _ in range(20):
        assert await fast.call("get_app_state") == "Stopped"
    await slow.aclose()
    await fast.aclose()


@pytest.mark.parametrize("method", ["get_calibrated", "get_paused", "get_settling"])
async def test_guiding_getters_answer_truthfully(client: LineClient, method: str) -> None:
    assert await client.call(method) is False


async def test_guiding_actions_are_refused_with_a_reason(client: LineClient) -> None:
    settle = {"pixels": 1.5, "time": 8, "timeout": 60}
    error = await client.error("guide", [settle, False])
    assert error["code"] == 1
    assert "mount" in error["message"]
    assert (await client.error("guide", [{"pixels": 1.5, "time": 8}, False])) == {
        "code": -32602, "message": "invalid settle params"}
    assert (await client.error("dither", [3, False, settle]))["code"] == 1
    assert await client.call("get_lock_position") is None
    assert await client.call("get_lock_shift_params") == {
        "enabled": False, "rate": [0.0, 0.0], "units": "arcsec/hr", "axes": "RA/Dec"}
    assert (await client.error("get_star_image")) == {"code": 2, "message": "no star selected"}
