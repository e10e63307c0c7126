"""What an INDI client knows of the server's devices: their properties and last messages.

:class:`PropertyStore` applies the driver → client events in order: a ``def*Vector`` defines a
:class:`Property`, a ``set*Vector`` updates the elements it names (a set for a property not yet
defined is dropped), a ``delProperty`` removes one property or a whole device, and a device's
``<message>`` is remembered (drivers explain failures there). BLOB data is never kept: a
frame belongs to whoever waits for it, not to the store.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Final

from phdserver.cameras.indi._events import (
    DefVector,
    DelProperty,
    Element,
    Event,
    Kind,
    Message,
    SetVector,
)

__all__ = ["Property", "PropertyStore"]

_MAX_REMEMBERED_MESSAGES: Final = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class Property:
    """The current state of one defined property (BLOB elements carry no data here)."""

    kind: Kind
    device: str
    name: str
    state: str
    perm: str
    rule: str | None
    elements: dict[str, Element]

    def number(self, element: str) -> float | None:
        """The element's value if it exists and is a finite number."""
        el = self.elements.get(element)
        if el is None or not isinstance(el.value, float) or not math.isfinite(el.value):
            return None
        return el.value

    def switch(self, element: str) -> bool | None:
        el = self.elements.get(element)
        return el.value if el is not None and isinstance(el.value, bool) else None


class PropertyStore:
    """``(device, name) → Property`` and each device's last message."""

    def __init__(self) -> None:
        self._props: dict[tuple[str, str], Property] = {}
        self._messages: dict[str, str] = {}

    def get(self, device: str, name: str) -> Property | None:
        return self._props.get((device, name))

    def devices(self) -> list[str]:
        return sorted({device for device, _ in self._props})

    def last_message(self, device: str) -> str | None:
        return self._messages.get(device)

    def clear(self) -> None:
        """Forget every property (the connection is gone; the server will define them again)."""
        self._props.clear()

    def apply(self, event: Event) -> None:
        if isinstance(event, DefVector):
            self._props[(event.device, event.name)] = Property(
                kind=event.kind, device=event.device, name=event.name, state=event.state,
                perm=event.perm, rule=event.rule,
                elements={k: _without_data(e) for k, e in event.elements.items()},
            )
        elif isinstance(event, SetVector):
            self._merge(event)
        elif isinstance(event, DelProperty):
            if event.name is None:
                for key in [k for k in self._props if k[0] == event.device]:
                    del self._props[key]
            else:
                self._props.pop((event.device, event.name), None)
        elif isinstance(event, Message) and event.device is not None:
            if len(self._messages) >= _MAX_REMEMBERED_MESSAGES:
                self._messages.pop(next(iter(self._messages)))
            self._messages[event.device] = event.message

    def _merge(self, event: SetVector) -> None:
        key = (event.device, event.name)
        prop = self._props.get(key)
        if prop is None:
            return  # a set before its definition: nothing to update
        elements = dict(prop.elements)
        for name, new in event.elements.items():
            old = elements.get(name)
            if old is None:
                continue
            elements[name] = dataclasses.replace(
                old,
                value=old.value if isinstance(new.value, bytes | bytearray) else new.value,
                min=old.min if new.min is None else new.min,
                max=old.max if new.max is None else new.max,
                step=old.step if new.step is None else new.step,
                format=old.format if new.format is None else new.format,
                size=old.size if new.size is None else new.size,
            )
        self._props[key] = dataclasses.replace(
            prop, state=event.state or prop.state, elements=elements
        )


def _without_data(element: Element) -> Element:
    if isinstance(element.value, bytes | bytearray) and element.value:
        return dataclasses.replace(element, value=b"")
    return element
