"""INDI's messages as frozen values: what :class:`~phdserver.cameras.indi._xml.IndiParser`
produces from the stream, and what our test driver receives.

:class:`DefVector`, :class:`SetVector`, :class:`DelProperty` and :class:`Message` travel
driver → client; :class:`NewVector`, :class:`GetProperties` and :class:`EnableBlob` client →
driver. :func:`parse_number` reads INDI's numbers (decimal or sexagesimal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "KINDS", "DefVector", "DelProperty", "Element", "EnableBlob", "Event", "GetProperties",
    "Kind", "Message", "NewVector", "SetVector", "parse_number",
]

Kind = Literal["Text", "Number", "Switch", "Light", "BLOB"]
KINDS: Final[tuple[Kind, ...]] = ("Text", "Number", "Switch", "Light", "BLOB")


@dataclass(frozen=True, slots=True, kw_only=True)
class Element:
    """One member of a vector. ``value`` is typed by the vector's kind: ``float`` (Number),
    ``str`` (Text; a Light's state), ``bool`` (Switch, On = True) or the decoded bytes (BLOB)."""

    name: str
    value: float | str | bool | bytes | bytearray
    label: str | None = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    format: str | None = None
    """A Number's printf format, or a BLOB's file format (``.fits``)."""
    size: int | None = None
    """A BLOB's uncompressed size in bytes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DefVector:
    """A property definition (``def*Vector``): all its elements with their attributes."""

    kind: Kind
    device: str
    name: str
    state: str = "Idle"
    perm: str = "ro"
    rule: str | None = None
    label: str | None = None
    group: str | None = None
    timeout: float = 0.0
    message: str | None = None
    elements: dict[str, Element] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class SetVector:
    """New values for some elements of a defined property (``set*Vector``)."""

    kind: Kind
    device: str
    name: str
    state: str | None = None
    timeout: float | None = None
    message: str | None = None
    elements: dict[str, Element] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class NewVector:
    """A client's request to change a property (``new*Vector``), as a driver receives it."""

    kind: Kind
    device: str
    name: str
    elements: dict[str, Element] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class DelProperty:
    """A property (or, with ``name`` None, a whole device) went away."""

    device: str
    name: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """A free-text message from a driver (or the server, with ``device`` None)."""

    device: str | None
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GetProperties:
    """A request to (re)define properties; ``device``/``name`` narrow it."""

    device: str | None = None
    name: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EnableBlob:
    """A client's BLOB policy for a device or property: ``Never``, ``Also`` or ``Only``."""

    device: str
    name: str | None
    mode: str


Event = DefVector | SetVector | NewVector | DelProperty | Message | GetProperties | EnableBlob


def parse_number(text: str) -> float:
    """Parse an INDI number: decimal or sexagesimal (``-12:30:15``, ``12 30``); NaN if neither."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = text.replace(":", " ").replace(";", " ").split()
    if not 1 < len(parts) <= 3:
        return math.nan
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return math.nan
    sign = -1.0 if parts[0].startswith("-") else 1.0
    total = abs(values[0])
    for i, v in enumerate(values[1:], start=1):
        total += abs(v) / 60.0**i
    return sign * total
