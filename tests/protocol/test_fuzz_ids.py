"""Every request with an id gets exactly one reply, with its id as the client wrote it.

Hypothesis writes JSON text itself (not through a serialiser), so it reaches what serialisers
never produce: numbers of any size and precision (``1e400``, ``-0``, ``123456789.123456789``),
strings with every escape (lone surrogates, NULs, ``\\/``, raw UTF-8), nesting, ids of every
JSON type, and batches. The lines go to the real daemon over TCP, one connection per example;
replies come back in order, so each is matched to its request and its id compared as text
(numbers) or value (strings). After the lines, the connection must still answer.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phdserver.rpc._codec import MAX_BATCH
from tests.protocol.test_fuzz import METHODS
from tests.support import SyncClient

# -- JSON text ----------------------------------------------------------------------------

_digits = st.text("0123456789", min_size=1, max_size=25)


@st.composite
def number_texts(draw: st.DrawFn) -> str:
    sign = draw(st.sampled_from(["", "-"]))
    whole = draw(st.sampled_from(["0"]) | _digits.map(lambda d: d.lstrip("0") or "0"))
    fraction = draw(st.sampled_from([""]) | _digits.map(lambda d: "." + d))
    exponent = draw(st.sampled_from([""]) | st.tuples(
        st.sampled_from("eE"), st.sampled_from(["", "+", "-"]),
        st.integers(0, 99999).map(str)).map("".join))
    return sign + whole + fraction + exponent


_ESCAPES = ['\\"', "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t", "\\u0000", "\\u001f",
            "\\ud800", "\\udfff", "\\ud83d\\ude00", "\\uDBFF", "\\u00e9", "\\uffff"]
_string_pieces = (st.sampled_from(_ESCAPES)
                  | st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=4)
                  .map(lambda t: t.replace("\\", "\\\\").replace('"', '\\"')))


def string_texts() -> st.SearchStrategy[str]:
    return st.lists(_string_pieces, max_size=6).map(lambda parts: '"' + "".join(parts) + '"')


json_texts = st.recursive(
    st.sampled_from(["null", "true", "false"]) | number_texts() | string_texts(),
    lambda inner: (st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]")
                   | st.lists(st.tuples(string_texts(), inner), max_size=4).map(
                       lambda pairs: "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}")),
    max_leaves=10,
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str | None]:
    """A request as JSON text, and its id's text (None for a notification)."""
    method = draw(st.sampled_from(METHODS).map(json.dumps) | string_texts())
    members = [f'"method":{method}']
    if draw(st.booleans()):
        members.append('"params":' + draw(
            st.lists(json_texts, max_size=3).map(lambda items: "[" + ",".join(items) + "]")
            | st.lists(st.tuples(string_texts(), json_texts), max_size=3).map(
                lambda pairs: "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}")))
    request_id = draw(st.none() | json_texts)
    if request_id is not None:
        members.append(f'"id":{request_id}')
    if draw(st.booleans()):
        members.append('"jsonrpc":"2.0"')
    order = draw(st.permutations(members))
    return "{" + ",".join(order) + "}", request_id


# -- comparing ids --------------------------------------------------------------------------

def _as_written(text: str | bytes) -> Any:
    """A JSON value with every number kept as its text: ``-0`` and ``0`` differ."""
    return json.loads(text, parse_float=lambda t: ("number", t), parse_int=lambda t: ("number", t))


def _reply_ids(line: bytes) -> list[Any]:
    document = _as_written(line.decode())
    replies = document if isinstance(document, list) else [document]
    assert all("jsonrpc" in reply and ("result" in reply) != ("error" in reply)
               for reply in replies), line
    return [reply["id"] for reply in replies]


def _read_reply(client: SyncClient) -> bytes:
    """The next line that is not an event."""
    while True:
        line = client.read_line()
        assert line.endswith(b"\r\n"), line
        if not line.startswith(b'{"Event"'):
            return line


def _expect_echo(client: SyncClient, written_ids: list[str]) -> None:
    assert _reply_ids(_read_reply(client)) == [_as_written(i) for i in written_ids]


def _still_answers(client: SyncClient) -> None:
    client.sock.sendall(b'{"method":"get_exposure","id":"still-open"}\r\n')
    assert orjson.loads(_read_reply(client))["id"] == "still-open"


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lines=st.lists(st.lists(requests(), min_size=1, max_size=4).map(tuple)
                      | requests().map(lambda r: r), min_size=1, max_size=4))
def test_every_id_is_answered_once_and_echoed_as_written(
        live_server: int, lines: list[Any]) -> None:
    client = SyncClient(live_server)
    for line in lines:
        if isinstance(line, tuple) and isinstance(line[0], tuple):  # a batch
            text = "[" + ",".join(request for request, _ in line) + "]"
            ids = [request_id for _, request_id in line if request_id is not None]
        else:
            text, request_id = line
            ids = [] if request_id is None else [request_id]
        client.sock.sendall(text.encode("utf-8", "surrogatepass") + b"\r\n")
        if ids:
            _expect_echo(client, ids)
    _still_answers(client)
    client.sock.close()


def test_batches_up_to_the_limit_run_whole_and_larger_ones_are_refused_per_request(
        live_server: int) -> None:
    client = SyncClient(live_server)
    for size, answered in ((MAX_BATCH - 1, True), (MAX_BATCH, False)):  # + 1 notification
        batch = ",".join(f'{{"method":"get_exposure","id":{i}}}' for i in range(size))
        client.sock.sendall(b"[" + batch.encode() + b',{"method":"get_exposure"}]\r\n')
        replies = orjson.loads(_read_reply(client))
        assert [reply["id"] for reply in replies] == list(range(size))
        assert all(("result" in reply) == answered for reply in replies)
        if not answered:
            assert {reply["error"]["code"] for reply in replies} == {-32600}
            assert str(MAX_BATCH) in replies[0]["error"]["message"]
    _still_answers(client)
    client.sock.close()


def test_a_line_over_the_length_limit_gets_one_error_and_the_connection_stays(
        live_server: int) -> None:
    client = SyncClient(live_server)
    huge = '{"method":"get_exposure","params":["' + "x" * 70_000 + '"],"id":7}'
    client.sock.sendall(huge.encode() + b"\r\n")
    reply = orjson.loads(_read_reply(client))
    assert reply["id"] is None
    assert "too big" in reply["error"]["message"]
    _still_answers(client)
    client.sock.close()


def test_a_line_nested_too_deep_is_a_parse_error_and_the_connection_stays(
        live_server: int) -> None:
    client = SyncClient(live_server)
    deep = "[" * 5000 + "]" * 5000
    client.sock.sendall(f'{{"method":"get_exposure","params":{deep},"id":8}}\r\n'.encode())
    reply = orjson.loads(_read_reply(client))
    assert reply["error"]["code"] == -32700
    assert reply["id"] is None
    _still_answers(client)
    client.sock.close()


def test_a_nul_in_a_path_is_the_clients_error(live_server: int) -> None:
    client = SyncClient(live_server)
    calls = [("capture_single_frame", {"exposure": 1, "path": "/tmp/a\u0000b.fits"}),
             ("start_light_calibration", {"inputs": ["/tmp/a\u0000b"]}),
             ("start_light_calibration", {"inputs": ["/tmp"], "output_dir": "/x\u0000"})]
    for number, (method, params) in enumerate(calls):
        client.sock.sendall(orjson.dumps({"method": method, "params": params, "id": number})
                            + b"\r\n")
        reply = orjson.loads(_read_reply(client))
        assert reply["id"] == number
        assert reply["error"]["code"] == -32602, reply
    _still_answers(client)
    client.sock.close()
