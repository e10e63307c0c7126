"""The TCP transport on its own: event delivery order, backpressure and slow-client drops.

A bare :func:`~phdserver.rpc.serve_event_server` with a one-method dispatcher and an event bus
the test publishes on; clients are raw sockets whose receive buffer is made small, so the
server's writes fill the kernel's buffers and the outbox takes the rest.
"""

from __future__ import annotations

import io
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import orjson
import structlog
import trio
import trio.testing

from phdserver.rpc import Dispatcher, EventBus, ServerLimits, decode_line, serve_event_server
from phdserver.rpc.events import Alert

PADDING = "x" * 2000


@asynccontextmanager
async def event_server(limits: ServerLimits) -> AsyncIterator[tuple[EventBus, int]]:
    bus = EventBus()
    dispatcher = Dispatcher({"ping": lambda params: "pong"})
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(
            serve_event_server, dispatcher, bus, lambda: [], host="127.0.0.1", port=0,
            limits=limits,
        ))
        try:
            yield bus, listeners[0].socket.getsockname()[1]
        finally:
            nursery.cancel_scope.cancel()


async def small_window_client(port: int) -> trio.SocketStream:
    """A client whose receive buffer is a few KiB, so the server cannot park much in it."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def read_lines(stream: trio.SocketStream, count: int) -> list[dict[str, object]]:
    buffer = bytearray()
    lines: list[dict[str, object]] = []
    while len(lines) < count:
        data = await stream.receive_some(1 << 16)
        assert data, f"connection closed after {len(lines)} of {count} lines"
        buffer += data
        *complete, rest = bytes(buffer).split(b"\r\n")
        buffer = bytearray(rest)
        lines += [orjson.loads(line) for line in complete]
    assert not buffer
    return lines


def alert(i: int) -> Alert:
    return Alert(Msg=f"{i:06d} {PADDING}")


async def test_events_to_a_late_reader_arrive_whole_and_in_order() -> None:
    # 8 MB of events at once: more than the socket buffers hold, so part goes out at once, the
    # rest waits in the outbox behind the writer task; then a request's reply comes after them.
    async with event_server(ServerLimits(drop_bytes=64 << 20)) as (bus, port):
        client = await small_window_client(port)
        await trio.testing.wait_all_tasks_blocked()  # the connection has joined the bus
        count = 4000
        for i in range(count):
            bus.publish(alert(i))
        await client.send_all(b'{"method":"ping","id":7}\r\n')
        lines = await read_lines(client, count + 1)
        assert [line["Msg"] for line in lines[:count]] == [alert(i).Msg for i in range(count)]
        assert lines[count] == {"jsonrpc": "2.0", "result": "pong", "id": 7}
        await client.aclose()


async def test_a_client_that_stops_reading_is_dropped_and_the_others_keep_everything() -> None:
    async with event_server(ServerLimits(drop_bytes=1 << 20)) as (bus, port):
        stuck = await small_window_client(port)
        reader = await small_window_client(port)
        await trio.testing.wait_all_tasks_blocked()
        assert bus.subscriber_count == 2
        sent = 0
        for _ in range(60):  # 60 batches of 100 events, 12 MB in all
            for _ in range(100):
                bus.publish(alert(sent))
                sent += 1
            lines = await read_lines(reader, 100)
            expected = [alert(i).Msg for i in range(sent - 100, sent)]
            assert [line["Msg"] for line in lines] == expected
        await trio.testing.wait_all_tasks_blocked()
        assert bus.subscriber_count == 1  # the stuck client was dropped
        await reader.send_all(b'{"method":"ping","id":1}\r\n')
        assert await read_lines(reader, 1) == [{"jsonrpc": "2.0", "result": "pong", "id": 1}]
        await stuck.aclose()
        await reader.aclose()


def test_requests_are_logged_one_by_one_only_at_debug_level() -> None:
    logged: list[dict[str, object]] = []

    def keep(_logger: object, _name: str, event: dict[str, object]) -> str:
        logged.append(event)
        return ""

    for level, expected in ((logging.INFO, 0), (logging.DEBUG, 1)):
        logged.clear()
        logger = structlog.wrap_logger(structlog.PrintLogger(io.StringIO()), processors=[keep],
                                       wrapper_class=structlog.make_filtering_bound_logger(level))
        dispatcher = Dispatcher({"ping": lambda params: "pong"}, logger)
        request = decode_line(b'{"method":"ping","id":1}')
        assert dispatcher.start(request) == b'{"jsonrpc":"2.0","result":"pong","id":1}'
        assert len(logged) == expected, level
