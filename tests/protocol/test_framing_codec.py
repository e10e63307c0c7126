"""Sans-I/O framing and codec: every input parses or becomes an error message, never a crash."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from phdserver.rpc import OVERSIZE, Batch, InvalidMessage, LineSplitter, Request, decode_line
from phdserver.rpc._codec import (
    MAX_BATCH,
    MAX_ID_DEPTH,
    RefusedRequest,
    dumps,
    encode_error,
    encode_result,
)


def feed_all(splitter: LineSplitter, chunks: list[bytes]) -> list[object]:
    out: list[object] = []
    for chunk in chunks:
        out.extend(splitter.feed(chunk))
    return out


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b'{"a":1}\r\n'], [b'{"a":1}']),
        ([b'{"a":1}\n'], [b'{"a":1}']),
        ([b"one\r\ntwo\n"], [b"one", b"two"]),
        ([b"on", b"e\r", b"\ntw", b"o\n"], [b"one", b"two"]),
        ([b"no newline yet"], []),
        ([b"\r\n"], [b""]),
    ],
)
def test_lines_are_split_on_lf_and_cr_is_stripped(chunks: list[bytes],
                                                  expected: list[bytes]) -> None:
    assert feed_all(LineSplitter(), chunks) == expected


def test_byte_by_byte_and_trailing_data() -> None:
    data = b'{"method":"get_app_state","id":1}\r\n{"method":"x"'
    splitter = LineSplitter()
    out = feed_all(splitter, [bytes([b]) for b in data])
    assert out == [b'{"method":"get_app_state","id":1}']
    assert splitter.buffered == len(b'{"method":"x"')


def test_oversize_line_reported_once_then_stream_resyncs() -> None:
    splitter = LineSplitter(max_line=100)
    out = feed_all(splitter, [b"x" * 60, b"x" * 60, b"x" * 500, b"tail\r\n", b"next\r\n"])
    assert out == [OVERSIZE, b"next"]
    assert splitter.buffered == 0


def test_oversize_line_in_one_chunk_with_neighbours() -> None:
    splitter = LineSplitter(max_line=100)
    assert splitter.feed(b"a\n" + b"y" * 300 + b"\nb\n") == [b"a", OVERSIZE, b"b"]


@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(16, 200))
def test_splitter_never_buffers_more_than_the_limit(chunks: list[bytes], limit: int) -> None:
    splitter = LineSplitter(max_line=limit)
    for chunk in chunks:
        for item in splitter.feed(chunk):
            assert item is OVERSIZE or (isinstance(item, bytes) and len(item) <= limit)
        assert splitter.buffered <= limit


@given(st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), max_size=10),
       st.data())
def test_splitting_does_not_depend_on_chunk_boundaries(lines: list[bytes],
                                                        data: st.DataObject) -> None:
    stream = b"".join(line + b"\r\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert feed_all(LineSplitter(), chunks) == lines


# -- codec ---------------------------------------------------------------------------------
def test_request_forms() -> None:
    assert decode_line(b'{"method":"loop","id":1}') == Request("loop", None, b"1", True)
    assert decode_line(b'{"method":"loop"}') == Request("loop", None, b"null", False)
    assert decode_line(b'{"method":"loop","id":null}') == Request("loop", None, b"null", True)
    assert decode_line(b'{"jsonrpc":"1.0","method":"m","params":[1],"id":"g"}') == Request(
        "m", [1], b'"g"', True)
    assert decode_line(b'{"method":"m","params":{"a":1},"id":{"a": 1.50}}') == Request(
        "m", {"a": 1}, b'{"a":1.50}', True)


@pytest.mark.parametrize("text", [b"1e400", b"-1.7976931348623157e309", b"123456789.123456789",
                                  b"1e-400", b"-0", b"0", b"-0.0", b"1E5", b"2.50", b"%d" % 2**80,
                                  b"[1.0,{\"a\":-0}]", b'"\\ud800"', b'"a\\u0000b"'])
def test_ids_are_echoed_as_written(text: bytes) -> None:
    request = decode_line(b'{"method":"m","id":%s}' % text)
    assert isinstance(request, Request)
    assert encode_result(0, request.id) == b'{"jsonrpc":"2.0","result":0,"id":%s}' % text


@pytest.mark.parametrize(
    ("line", "code", "message"),
    [
        (b"", -32700, 'invalid JSON request: empty string on line 1 at "..."'),
        (b"   ", -32700, 'invalid JSON request: empty string on line 1 at "..."'),
        (b'{"id":301}', -32600, "invalid request - missing method"),
        (b'{"method":5,"id":1}', -32600, "invalid request - missing method"),
        (b'{"method":"get_exposure","params":5,"id":302}', -32600,
         "invalid request - params must be an array or object"),
        (b'{"method":"get_exposure","params":"x","id":303}', -32600,
         "invalid request - params must be an array or object"),
        (b"5", -32600, "invalid request - request must be a JSON object"),
    ],
)
def test_invalid_requests(line: bytes, code: int, message: str) -> None:
    assert decode_line(line) == InvalidMessage(code, message)


def test_parse_error_message_is_phd2_style() -> None:
    result = decode_line(b"{this is not json")
    assert isinstance(result, InvalidMessage)
    assert result.code == -32700
    assert result.message.startswith("invalid JSON request: ")
    assert ' on line 1 at "this is not ..."' in result.message


def test_batches() -> None:
    batch = decode_line(b'[{"method":"a","id":1},{"method":"b"},5]')
    assert isinstance(batch, Batch)
    assert batch.items[0] == Request("a", None, b"1", True)
    assert batch.items[1] == Request("b", None, b"null", False)
    assert isinstance(batch.items[2], InvalidMessage)
    assert decode_line(b"[]") == Batch(())


def test_a_batch_over_the_limit_is_refused_request_by_request() -> None:
    items = [b'{"method":"a","id":%d}' % i for i in range(MAX_BATCH + 1)] + [b'{"method":"n"}']
    batch = decode_line(b"[" + b",".join(items) + b"]")
    assert isinstance(batch, Batch)
    refused = batch.items[:-1]
    assert [item.id for item in refused] == [b"%d" % i for i in range(MAX_BATCH + 1)]
    assert all(isinstance(item, RefusedRequest) and item.code == -32600 for item in refused)
    assert batch.items[-1] == Request("n", None, b"null", False)
    whole = decode_line(b"[" + b",".join(items[:MAX_BATCH]) + b"]")
    assert isinstance(whole, Batch)
    assert all(isinstance(item, Request) for item in whole.items)


def test_an_id_nested_past_the_limit_is_invalid() -> None:
    deep = b"[" * (MAX_ID_DEPTH + 1) + b"]" * (MAX_ID_DEPTH + 1)
    assert decode_line(b'{"method":"m","id":%s}' % deep) == InvalidMessage(
        -32600, f"invalid request - id nested deeper than {MAX_ID_DEPTH} levels")
    ok = b"[" * MAX_ID_DEPTH + b"]" * MAX_ID_DEPTH
    request = decode_line(b'{"method":"m","id":%s}' % ok)
    assert isinstance(request, Request)
    assert request.id == ok


def test_lone_surrogates_and_huge_integers_serialise() -> None:
    assert dumps("\ud800x") == b'"\\ufffdx"'
    assert dumps({"a": [2**80, "\udfff"]}) == b'{"a":[%d,"\\ufffd"]}' % 2**80
    assert orjson.loads(encode_error(1, "bad \ud800"))["error"]["message"] == "bad \ufffd"


def test_nan_and_bad_utf8_are_parse_errors() -> None:
    for line in (b'{"method":"m","id":NaN}', b'{"method":"\xff","id":1}',
                 b"[" * 100000 + b"]" * 100000):
        result = decode_line(line)
        assert isinstance(result, InvalidMessage)
        assert result.code == -32700


def test_encoded_replies_are_exact() -> None:
    assert encode_result(0, b"1") == b'{"jsonrpc":"2.0","result":0,"id":1}'
    assert encode_result("Stopped", b'"g"') == b'{"jsonrpc":"2.0","result":"Stopped","id":"g"}'
    assert encode_error(-32601, "method not found", b"62") == (
        b'{"jsonrpc":"2.0","error":{"code":-32601,"message":"method not found"},"id":62}')


@given(st.binary(max_size=200))
def test_any_bytes_decode_without_raising(line: bytes) -> None:
    result = decode_line(line)
    assert isinstance(result, Request | InvalidMessage | Batch)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=4),
    max_leaves=10,
)


@given(json_values)
def test_any_json_document_decodes_without_raising(value: object) -> None:
    result = decode_line(orjson.dumps(value) if _fits_orjson(value) else json.dumps(value).encode())
    assert isinstance(result, Request | InvalidMessage | Batch)


def _fits_orjson(value: object) -> bool:
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True
