"""Hypothesis against the reply parser and framers: random bytes, truncated brackets, huge and
deeply nested payloads. Nothing may raise, and nothing may reach ``eval`` or ``exec``."""

from __future__ import annotations

import ast
import builtins
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phdserver.cameras.controller import _protocol
from phdserver.cameras.controller._protocol import (
    MAX_REPLY_BYTES,
    STATE_NAMES,
    LineFramer,
    Reply,
    ReplyFramer,
    ReplyKind,
    done_reply,
    parse_reply,
)


@pytest.fixture(autouse=True)
def _no_eval(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A call of eval or exec from the protocol module, or from ``ast`` (where
    ``literal_eval`` lives), fails the test. (Patched as module globals, which shadow the
    builtins there: hypothesis itself needs the real ones.)"""

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("eval/exec called on controller input")

    for module in (_protocol, ast):
        for name in ("eval", "exec"):
            monkeypatch.setattr(module, name, forbidden, raising=False)
    assert builtins.eval is not forbidden
    return


literals = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=20,
)


@st.composite
def status_dicts(draw: st.DrawFn) -> dict[str, object]:
    fields: dict[str, object] = {
        name: draw(st.sampled_from(["0000", "1111", "0101", 0, 15, "x", True]))
        for name in draw(st.lists(st.sampled_from(STATE_NAMES), max_size=6, unique=True))
    }
    for key in ("ready", "error", "cmd_error", "cmd_error_msg", "comment", "width", "height"):
        if draw(st.booleans()):
            fields[key] = draw(literals)
    fields.update(draw(st.dictionaries(st.text(max_size=8), literals, max_size=3)))
    return fields


@st.composite
def replies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "dict", "truncated", "huge", "nested", "brackets"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    whole = done_reply(draw(status_dicts()))
    if kind == "dict":
        return whole
    if kind == "truncated":
        return whole[: draw(st.integers(0, len(whole)))]
    if kind == "huge":
        return b"[DONE {'a': '" + b"x" * draw(st.integers(8000, 20000)) + b"'}]"
    if kind == "nested":
        depth = draw(st.integers(50, 3000))
        return b"[DONE {'a': " + b"[" * depth + b"]" * depth + b"}]"
    return draw(st.text(alphabet="[]{}'\"\\ DONEROR:,01", max_size=200)).encode()


def _check(reply: Reply) -> None:
    assert isinstance(reply, Reply)
    assert isinstance(reply.kind, ReplyKind)
    assert isinstance(reply.detail, str)
    if reply.kind is ReplyKind.DONE and reply.status is not None:
        assert all(0 <= v < 1 << 16 for v in reply.status.bits.values())


@settings(max_examples=150, deadline=None)
@given(data=replies(), eof=st.booleans())
def test_parse_reply_never_raises(data: bytes, eof: bool) -> None:
    _check(parse_reply(data, eof=eof))


@settings(max_examples=80, deadline=None)
@given(data=replies(), cuts=st.lists(st.integers(1, 400), max_size=20))
def test_reply_framer_never_raises_however_the_bytes_arrive(data: bytes, cuts: list[int]) -> None:
    framer = ReplyFramer()
    position = 0
    for size in [*cuts, len(data)]:
        chunk = data[position : position + size]
        position += size
        result = framer.feed(chunk)
        if result is not None:
            _check(result)
            return
        assert len(framer) <= MAX_REPLY_BYTES + 400 + len(data)
    _check(framer.eof())


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(replies(), max_size=3), cut=st.integers(8, 512))
def test_line_framer_never_raises_and_bounds_its_buffer(lines: list[bytes], cut: int) -> None:
    framer = LineFramer()
    stream = b"\n".join(lines) + b"\n"
    for i in range(0, len(stream), cut):
        framer.feed(stream[i : i + cut])
        while (reply := framer.next_reply()) is not None:
            _check(reply)
        assert framer.pending <= MAX_REPLY_BYTES + cut


def test_a_huge_reply_is_refused_not_parsed() -> None:
    reply = parse_reply(b"[DONE {'a': '" + b"x" * 100_000 + b"'}]")
    assert reply.kind is ReplyKind.MALFORMED
    assert "longer than 8192 bytes" in reply.detail
