"""One event bus: every event is encoded once and handed to every connected client.

Publishing is synchronous and never waits: each subscriber is a callable that appends the line
to that client's bounded outbox. A client too slow to keep up is dropped by its own connection
(see ``_transport``), so one stuck client never stalls the others or the publisher.

Events published while a request is being handled reach that client before the reply (replies
and events share the client's single outbox), which is the order PHD2 produces.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable

import orjson

from .events import Event

__all__ = ["EventBus", "Subscriber"]

Subscriber = Callable[[bytes], None]


def short_hostname() -> str:
    """PHD2 reports ``wxGetHostName()``: the host name without its domain."""
    return socket.gethostname().split(".", 1)[0] or "localhost"


class EventBus:
    def __init__(
        self,
        *,
        instance: int = 1,
        host: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._instance = instance
        self._host = host if host is not None else short_hostname()
        self._host_json = orjson.dumps(self._host)
        self._clock = clock
        self._subscribers: dict[int, Subscriber] = {}
        self._next_token = 0
        self.published = 0
        """How many events have been published (for tests and statistics)."""

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def encode(self, event: Event) -> bytes:
        """One CRLF-terminated line: ``Event``, ``Timestamp``, ``Host``, ``Inst``, fields.

        The timestamp always has three decimals, as PHD2 writes it (``%.3f``).
        """
        head = (b'{"Event":' + orjson.dumps(event.NAME)
                + b',"Timestamp":' + b"%.3f" % self._clock()
                + b',"Host":' + self._host_json + b',"Inst":' + b"%d" % self._instance)
        fields = event.wire_fields()
        if not fields:
            return head + b"}\r\n"
        return head + b"," + orjson.dumps(fields)[1:] + b"\r\n"

    def encode_all(self, events: Iterable[Event]) -> bytes:
        return b"".join(self.encode(event) for event in events)

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns the function that removes it."""
        token = self._next_token
        self._next_token += 1
        self._subscribers[token] = subscriber

        def unsubscribe() -> None:
            self._subscribers.pop(token, None)

        return unsubscribe

    def publish(self, event: Event) -> None:
        self.published += 1
        if not self._subscribers:
            return
        line = self.encode(event)
        for subscriber in list(self._subscribers.values()):
            subscriber(line)
