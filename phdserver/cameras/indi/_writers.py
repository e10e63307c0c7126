"""INDI's client → server messages as bytes: ``getProperties``, ``enableBLOB``, ``new*Vector``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal
from xml.sax.saxutils import escape, quoteattr

from phdserver.cameras.indi._events import Kind

__all__ = ["enable_blob_xml", "format_value", "get_properties_xml", "new_vector_xml"]


def get_properties_xml(device: str | None = None, name: str | None = None) -> bytes:
    """``<getProperties version="1.7" .../>``: ask for every (or one device's) definitions."""
    attrs = ' version="1.7"'
    if device is not None:
        attrs += f" device={quoteattr(device)}"
        if name is not None:
            attrs += f" name={quoteattr(name)}"
    return f"<getProperties{attrs}/>\n".encode()


def enable_blob_xml(device: str, name: str | None, mode: str) -> bytes:
    """``<enableBLOB>``: whether this connection receives BLOBs (``Never``/``Also``/``Only``)."""
    if mode not in ("Never", "Also", "Only"):
        raise ValueError(f"enableBLOB mode must be Never, Also or Only, not {mode!r}")
    attrs = f" device={quoteattr(device)}"
    if name is not None:
        attrs += f" name={quoteattr(name)}"
    return f"<enableBLOB{attrs}>{mode}</enableBLOB>\n".encode()


def format_value(kind: Kind, value: float | str | bool) -> str:
    """An element value as INDI text."""
    if kind == "Switch":
        return "On" if value else "Off"
    if kind == "Number":
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"cannot send non-finite number {value!r}")
        return format(number, ".10g")
    return escape(str(value))


def new_vector_xml(
    kind: Literal["Text", "Number", "Switch"],
    device: str,
    name: str,
    values: Mapping[str, float | str | bool],
) -> bytes:
    """``<new*Vector>``: ask the driver to change some elements of a property."""
    parts = [f"<new{kind}Vector device={quoteattr(device)} name={quoteattr(name)}>"]
    for element, value in values.items():
        parts.append(
            f"<one{kind} name={quoteattr(element)}>{format_value(kind, value)}</one{kind}>"
        )
    parts.append(f"</new{kind}Vector>\n")
    return "".join(parts).encode()
