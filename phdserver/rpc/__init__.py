"""The PHD2 event-server protocol: framing, JSON-RPC dispatch, events and the TCP transport.

Nothing here knows about cameras or operations; the app hands the dispatcher a method table and
the transport a greeting function.
"""

from ._bus import EventBus, Subscriber, short_hostname
from ._codec import Batch, InvalidMessage, Request, decode_line
from ._dispatch import Dispatcher, Handler
from ._framing import DEFAULT_MAX_LINE, OVERSIZE, LineSplitter
from ._transport import Connections, ServerLimits, serve_event_server

__all__ = [
    "DEFAULT_MAX_LINE",
    "OVERSIZE",
    "Batch",
    "Connections",
    "Dispatcher",
    "EventBus",
    "Handler",
    "InvalidMessage",
    "LineSplitter",
    "Request",
    "ServerLimits",
    "Subscriber",
    "decode_line",
    "serve_event_server",
    "short_hostname",
]
