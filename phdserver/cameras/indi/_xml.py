"""The INDI XML protocol without I/O: bytes in, typed events out; events to bytes.

INDI (protocol 1.7) is an endless stream of top-level XML elements with no enclosing document.
:class:`IndiParser` feeds expat a synthetic ``<indi>`` root first and then the stream, and turns
each completed top-level element into a frozen event: :class:`DefVector`, :class:`SetVector`,
:class:`NewVector`, :class:`DelProperty`, :class:`Message`, :class:`GetProperties` or
:class:`EnableBlob` (the last three and ``NewVector`` travel client → driver; our test driver
parses them with this same class). The events are defined in :mod:`._events`, the messages we
send in :mod:`._writers`; both are re-exported here.

Why expat handlers instead of ``XMLPullParser``: a BLOB's base64 text reaches
:class:`~phdserver.cameras.indi._blob.Base64Stream` piece by piece as it arrives, so an 8192²
frame never exists as one 180 MB string.

Error and resource policy: any input either parses or raises :class:`IndiProtocolError`, never
another exception (a hypothesis test holds us to that). After an error the parser is dead and
raises again on every feed; the client drops the connection and starts over. Memory is bounded:
at most ``max_pending`` bytes may arrive without the parser making progress (a giant tag), element
text other than BLOB data is capped at ``max_text``, a vector at ``max_elements`` elements, and a
BLOB at ``max_blob`` decoded bytes.
"""

from __future__ import annotations

import binascii
import pyexpat
from collections.abc import Mapping
from typing import Final

from phdserver.cameras.indi._blob import Base64Stream, BlobTooLarge
from phdserver.cameras.indi._events import (
    KINDS,
    DefVector,
    DelProperty,
    Element,
    EnableBlob,
    Event,
    GetProperties,
    Kind,
    Message,
    NewVector,
    SetVector,
    parse_number,
)
from phdserver.cameras.indi._writers import enable_blob_xml, get_properties_xml, new_vector_xml
from phdserver.errors import CameraError

__all__ = [
    "DefVector", "DelProperty", "Element", "EnableBlob", "Event", "GetProperties",
    "IndiParser", "IndiProtocolError", "Kind", "Message", "NewVector", "SetVector",
    "enable_blob_xml", "get_properties_xml", "new_vector_xml", "parse_number",
]

_FEED_SLICE: Final = 64 * 1024
_ROOT: Final = b"<indi>"


class IndiProtocolError(CameraError):
    """The peer sent something that is not INDI XML (or exceeds our limits)."""


def _number_attr(attrs: Mapping[str, str], key: str) -> float | None:
    raw = attrs.get(key)
    return None if raw is None else parse_number(raw)


class IndiParser:
    """Incremental INDI XML parser; see the module docstring for its limits and error policy."""

    __slots__ = (
        "_blob", "_blob_caught_up", "_child", "_child_attrs", "_depth", "_error", "_events",
        "_expat", "_fed", "_max_blob", "_max_elements", "_max_pending", "_max_text", "_parsing",
        "_pending", "_skip_depth", "_text", "_text_len", "_top", "_top_attrs", "_top_elements",
        "_top_text",
    )

    def __init__(
        self,
        *,
        max_pending: int = 1 << 20,
        max_text: int = 1 << 20,
        max_elements: int = 10_000,
        max_blob: int = 1 << 30,
    ) -> None:
        self._max_pending = max_pending
        self._max_text = max_text
        self._max_elements = max_elements
        self._max_blob = max_blob
        self._events: list[Event] = []
        self._error: IndiProtocolError | None = None
        self._depth = 0
        self._skip_depth = 0
        self._pending = 0
        self._top: str | None = None
        self._top_attrs: dict[str, str] = {}
        self._top_elements: dict[str, Element] = {}
        self._top_text: list[str] = []
        self._child: str | None = None
        self._child_attrs: dict[str, str] = {}
        self._text: list[str] = []
        self._text_len = 0
        self._blob: Base64Stream | None = None
        self._blob_caught_up = False
        self._parsing = 0
        p = pyexpat.ParserCreate()
        p.buffer_text = False  # one callback per expat text token, so positions are exact
        p.StartElementHandler = self._start
        p.EndElementHandler = self._end
        p.CharacterDataHandler = self._data
        self._expat = p
        self._depth = -1  # the synthetic root below brings it to 0; INDI's elements are at 1
        p.Parse(_ROOT, False)
        self._fed = len(_ROOT)

    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data`` and return the events it completes, in order."""
        if self._error is not None:
            raise self._error
        try:
            pos, size = 0, len(data)
            while pos < size:
                if self._blob is not None and self._blob_caught_up:
                    pos = self._bypass(data, pos)
                    continue
                chunk = data[pos : pos + _FEED_SLICE]
                pos += len(chunk)
                self._pending += len(chunk)
                self._blob_caught_up = False
                self._parsing = len(chunk)
                self._expat.Parse(chunk, False)
                self._fed += len(chunk)
                self._parsing = 0
                self._check_pending()
        except IndiProtocolError as exc:
            self._error = exc
            raise
        except pyexpat.ExpatError as exc:
            self._error = IndiProtocolError(f"INDI: protocol error: malformed XML ({exc})")
            raise self._error from exc
        except (binascii.Error, BlobTooLarge) as exc:
            self._error = IndiProtocolError(f"INDI: protocol error: bad BLOB data ({exc})")
            raise self._error from exc
        events, self._events = self._events, []
        return events

    def _bypass(self, data: bytes, pos: int) -> int:
        """Hand BLOB text straight to the decoder, skipping expat (half the cost per byte).

        Only called when expat holds nothing back: its last event was BLOB text ending exactly
        where our input to it ended. Stops at the next ``<`` (the end tag goes to expat, which
        is still inside ``oneBLOB`` and none the wiser) or at an ``&`` (an entity: let expat
        resolve it). Returns the new position in ``data``.
        """
        assert self._blob is not None
        lt = data.find(b"<", pos)
        stop = len(data) if lt < 0 else lt
        amp = data.find(b"&", pos, stop)
        if amp >= 0:
            stop = amp
            self._blob_caught_up = False
        if stop > pos:
            self._blob.feed(data[pos:stop])
            self._pending = 0
        if stop < len(data):
            self._blob_caught_up = False
        return stop

    def _check_pending(self) -> None:
        if self._pending > self._max_pending:
            raise IndiProtocolError(
                f"INDI: protocol error: over {self._max_pending} bytes without a complete XML token"
            )

    # -- expat handlers ---------------------------------------------------------------------------

    def _start(self, tag: str, attrs: dict[str, str]) -> None:
        self._pending = 0
        self._depth += 1
        if self._skip_depth or self._depth == 0:
            return
        if self._depth == 1:
            self._top, self._top_attrs = tag, attrs
            self._top_elements, self._top_text = {}, []
            self._text_len = 0
        elif self._depth == 2 and self._top is not None:
            self._child, self._child_attrs = tag, attrs
            self._text, self._text_len = [], 0
            if tag == "oneBLOB":
                self._blob = Base64Stream(max_bytes=self._max_blob)
        else:  # deeper than INDI ever nests: ignore that subtree
            self._skip_depth = self._depth

    def _data(self, text: str) -> None:
        self._pending = 0
        if self._skip_depth:
            return
        if self._blob is not None:
            self._blob.feed(text)
            if text.isascii():  # then len(text) is its length in bytes
                end = self._expat.CurrentByteIndex + len(text)
                self._blob_caught_up = end == self._fed + self._parsing
            return
        if self._depth == 2:
            store = self._text
        elif self._depth == 1 and self._top == "enableBLOB":
            store = self._top_text
        else:
            return  # whitespace between elements: not kept, so nothing to bound
        self._text_len += len(text)
        if self._text_len > self._max_text:
            raise IndiProtocolError(f"INDI: protocol error: element text over {self._max_text}")
        store.append(text)

    def _end(self, tag: str) -> None:
        self._pending = 0
        depth = self._depth
        self._depth -= 1
        if self._skip_depth:
            if depth == self._skip_depth:
                self._skip_depth = 0
            return
        if depth == 2:
            self._end_child()
        elif depth == 1:
            top, attrs = self._top, self._top_attrs
            self._top = None
            event = self._build(top or tag, attrs)
            if event is not None:
                self._events.append(event)
        elif depth == 0:
            raise IndiProtocolError("INDI: protocol error: unbalanced end tag")

    def _end_child(self) -> None:
        tag, attrs = self._child or "", self._child_attrs
        blob, self._blob = self._blob, None
        self._child = None
        top = self._top or ""
        kind = _kind_of_child(tag)
        if kind is None or not top.endswith(kind + "Vector"):
            return  # unknown or mismatched member: ignore it
        name = attrs.get("name")
        if not name:
            raise IndiProtocolError(f"INDI: protocol error: <{tag}> without a name")
        if len(self._top_elements) >= self._max_elements:
            raise IndiProtocolError(f"INDI: protocol error: over {self._max_elements} elements")
        text = "".join(self._text).strip()
        value: float | str | bool | bytes | bytearray
        if kind == "Number":
            value = parse_number(text)
        elif kind == "Switch":
            value = text == "On"
        elif kind == "BLOB":
            value = blob.finish() if blob is not None else b""
        else:
            value = text
        size = attrs.get("size")
        self._top_elements[name] = Element(
            name=name,
            value=value,
            label=attrs.get("label"),
            min=_number_attr(attrs, "min"),
            max=_number_attr(attrs, "max"),
            step=_number_attr(attrs, "step"),
            format=attrs.get("format"),
            size=int(size) if size is not None and size.isdecimal() and len(size) < 19 else None,
        )

    def _build(self, tag: str, a: dict[str, str]) -> Event | None:
        elements = self._top_elements
        self._top_elements = {}
        if tag == "message":
            return Message(device=a.get("device"), message=a.get("message", ""))
        if tag == "getProperties":
            return GetProperties(device=a.get("device"), name=a.get("name"),
                                 version=a.get("version"))
        prefix, kind = _split_vector_tag(tag)
        if kind is None and tag not in ("delProperty", "enableBLOB"):
            return None  # an element we do not know (e.g. pingRequest): skip it
        device = a.get("device")
        if device is None:
            raise IndiProtocolError(f"INDI: protocol error: <{tag}> without a device")
        if tag == "delProperty":
            return DelProperty(device=device, name=a.get("name"), message=a.get("message"))
        if tag == "enableBLOB":
            mode = "".join(self._top_text).strip()
            return EnableBlob(device=device, name=a.get("name"), mode=mode)
        name = a.get("name")
        if not name:
            raise IndiProtocolError(f"INDI: protocol error: <{tag}> without a name")
        k: Kind = kind  # type: ignore[assignment]
        if prefix == "new":
            return NewVector(kind=k, device=device, name=name, elements=elements)
        timeout = _number_attr(a, "timeout")
        if prefix == "set":
            return SetVector(kind=k, device=device, name=name, state=a.get("state"),
                             timeout=timeout, message=a.get("message"), elements=elements)
        return DefVector(
            kind=k, device=device, name=name, state=a.get("state", "Idle"),
            perm=a.get("perm", "ro"), rule=a.get("rule"), label=a.get("label"),
            group=a.get("group"), timeout=timeout or 0.0, message=a.get("message"),
            elements=elements,
        )


def _split_vector_tag(tag: str) -> tuple[str, Kind | None]:
    """``setBLOBVector`` → ``("set", "BLOB")``; anything else → ``("", None)``."""
    if tag.endswith("Vector") and tag[:3] in ("def", "set", "new") and tag[3:-6] in KINDS:
        return tag[:3], tag[3:-6]  # type: ignore[return-value]
    return "", None


def _kind_of_child(tag: str) -> Kind | None:
    for prefix in ("def", "one"):
        if tag.startswith(prefix) and tag[len(prefix):] in KINDS:
            return tag[len(prefix):]  # type: ignore[return-value]
    return None
