"""The events phdserver sends, as typed records whose field names are the wire names.

Every event line is ``{"Event":..., "Timestamp":..., "Host":..., "Inst":..., <fields>}`` in that
order (PHD2's ``struct Ev``), one JSON object per CRLF-terminated line. A field whose value is
``None`` is left out: N.I.N.A. drops its listener on a JSON ``null`` in a numeric field, so an
event never carries one. Events never carry a ``jsonrpc`` member (phd2client treats any line with
one as a reply).

``protocol/events.json`` documents these; a test keeps the two in step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "PHD_SUBVERSION",
    "PHD_VERSION",
    "Alert",
    "AppState",
    "ConfigurationChange",
    "Event",
    "GuideParamChange",
    "LoopingExposures",
    "LoopingExposuresStopped",
    "OperationFinished",
    "OperationProgress",
    "SingleFrameComplete",
    "Version",
    "all_event_types",
]

PHD_VERSION = "2.6.13"
"""The PHD2 version we are protocol-compatible with (clients gate features on it)."""
PHD_SUBVERSION = "phdserver"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of all events. Subclasses set ``NAME`` and declare wire-named fields."""

    NAME: ClassVar[str] = ""

    def wire_fields(self) -> dict[str, Any]:
        """The event's own fields, in declaration order, without ``None`` values."""
        out: dict[str, Any] = {}
        for name in _field_names(type(self)):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = tuple(f.name for f in dataclasses.fields(cls))
        _FIELD_NAMES[cls] = names
    return names


@dataclass(frozen=True, slots=True, kw_only=True)
class Version(Event):
    NAME: ClassVar[str] = "Version"
    PHDVersion: str = PHD_VERSION
    PHDSubver: str = PHD_SUBVERSION
    OverlapSupport: bool = True
    MsgVersion: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class AppState(Event):
    NAME: ClassVar[str] = "AppState"
    State: str





@dataclass(frozen=True, slots=True, kw_only=True)
class LoopingExposures(Event):
    """One per looping frame. Star fields only when a star is measured; else PHD2's
    ``ErrorCode`` 8 / ``Status`` "No star selected"."""

    NAME: ClassVar[str] = "LoopingExposures"
    Frame: int
    StarMass: float | None = None
    SNR: float | None = None
    HFD: float | None = None
    ErrorCode: int | None = None
    Status: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LoopingExposuresStopped(Event):
    NAME: ClassVar[str] = "LoopingExposuresStopped"


@dataclass(frozen=True, slots=True, kw_only=True)
class SingleFrameComplete(Event):
    NAME: ClassVar[str] = "SingleFrameComplete"
    Success: bool
    Error: str | None = None
    Path: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigurationChange(Event):
    NAME: ClassVar[str] = "ConfigurationChange"


@dataclass(frozen=True, slots=True, kw_only=True)
class GuideParamChange(Event):
    NAME: ClassVar[str] = "GuideParamChange"
    Name: str
    Value: str | int | float | bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert(Event):
    """A message for the operator. ``Type`` is one of info, question, warning, error."""

    NAME: ClassVar[str] = "Alert"
    Msg: str
    Type: str = "info"


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationProgress(Event):
    """A long-running operation changed state or made progress (at most twice a second)."""

    NAME: ClassVar[str] = "OperationProgress"
    OperationId: int
    Kind: str
    Status: str
    Progress: float
    Message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationFinished(Event):
    NAME: ClassVar[str] = "OperationFinished"
    OperationId: int
    Kind: str
    Status: str
    Error: str | None = None


def all_event_types() -> dict[str, type[Event]]:
    """Every event this server can send, by wire name (for the catalogue test)."""
    return {cls.NAME: cls for cls in _subclasses(Event)}


def _subclasses(cls: type[Event]) -> list[type[Event]]:
    found: list[type[Event]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found
