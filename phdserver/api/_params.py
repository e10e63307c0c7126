"""Declared parameters and their validation: the edge where raw JSON becomes typed values.

Each method declares its parameters once, as :class:`Param` records. The same declarations bind
positional arrays onto names (PHD2 maps an array onto the declared names in order), validate
types and ranges, and are compared with ``protocol/methods.json`` by a test, so the catalogue
cannot drift from the code.

JSON types are checked strictly: ``true`` is not an integer, ``2.5`` is not an integer, ``2.0``
is accepted as the integer 2 (some clients send every number as a float), and 0 and 1 are
accepted as booleans, as PHD2 accepts them. Unknown named
parameters are ignored, as PHD2 ignores them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from phdserver.errors import InvalidParams

__all__ = ["REQUIRED", "Param", "absolute_path", "bind"]


class _Required:
    __slots__ = ()

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()

JSON_TYPES: Final = ("integer", "number", "boolean", "string", "array", "object", "any")


@dataclass(frozen=True, slots=True, kw_only=True)
class Param:
    """One parameter: wire ``name``, JSON ``type``, default (or REQUIRED) and constraints.

    ``attr`` is the Python keyword the handler receives (defaults to ``name``); ``nullable``
    lets an explicit JSON null through as None; ``check`` is a final validator that raises
    :class:`InvalidParams` for constraints the fields cannot express.
    """

    name: str
    type: str
    default: Any = REQUIRED
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    attr: str | None = None
    check: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        if self.type not in JSON_TYPES:
            raise ValueError(f"unknown JSON type {self.type!r} for {self.name}")

    @property
    def keyword(self) -> str:
        return self.attr or self.name

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def allowed(self) -> str:
        """Words for the allowed values, used in error messages."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        kind = {
            "integer": "an integer",
            "number": "a number",
            "boolean": "true or false (or 1 or 0)",
            "string": "a string",
            "array": "an array",
            "object": "an object",
            "any": "a value",
        }[self.type]
        if self.minimum is not None and self.maximum is not None:
            return f"{kind} from {_fmt(self.minimum)} to {_fmt(self.maximum)}"
        if self.minimum is not None:
            return f"{kind} >= {_fmt(self.minimum)}"
        if self.maximum is not None:
            return f"{kind} <= {_fmt(self.maximum)}"
        if self.max_length is not None:
            return f"{kind} of at most {self.max_length} characters"
        return kind

    def convert(self, value: Any) -> Any:
        if value is None and self.nullable:
            return None
        value = _coerce(self, value)
        if self.minimum is not None and value < self.minimum:
            raise self.invalid(value)
        if self.maximum is not None and value > self.maximum:
            raise self.invalid(value)
        if self.max_length is not None and len(value) > self.max_length:
            raise InvalidParams(
                f"invalid {self.name}: {len(value)} characters, expected {self.allowed()}",
                param=self.name,
            )
        if self.choices is not None and value not in self.choices:
            raise self.invalid(value)
        if self.check is not None:
            value = self.check(value)
        return value

    def invalid(self, value: Any) -> InvalidParams:
        shown = repr(value) if not isinstance(value, str) else f'"{value[:40]}"'
        return InvalidParams(
            f"invalid {self.name}: {shown}, expected {self.allowed()}", param=self.name
        )


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _coerce(param: Param, value: Any) -> Any:
    kind = param.type
    if kind == "integer":
        if isinstance(value, bool):
            raise param.invalid(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise param.invalid(value)
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise param.invalid(value)
        if not math.isfinite(value):
            raise param.invalid(value)
        return value
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if type(value) is int and value in (0, 1):  # PHD2 reads 0 and 1 as booleans
            return bool(value)
        raise param.invalid(value)
    if kind == "string":
        if not isinstance(value, str):
            raise param.invalid(value)
        return value
    if kind == "array":
        if not isinstance(value, list):
            raise param.invalid(value)
        return value
    if kind == "object":
        if not isinstance(value, dict):
            raise param.invalid(value)
        return value
    return value


def bind(raw: list[Any] | dict[str, Any] | None, params: Sequence[Param]) -> dict[str, Any]:
    """Map raw JSON params onto the declared ones; returns handler keywords."""
    if raw is None:
        raw = {}
    if isinstance(raw, list):
        if len(raw) > len(params):
            # PHD2 ignores extras too; refusing would break clients that send [] or a
            # trailing value, so only the declared positions are read.
            raw = raw[: len(params)]
        given = dict(zip((p.name for p in params), raw, strict=False))
    else:
        given = raw
    bound: dict[str, Any] = {}
    for param in params:
        if param.name in given:
            bound[param.keyword] = param.convert(given[param.name])
        elif param.required:
            raise InvalidParams(
                f"missing {param.name}: expected {param.allowed()}", param=param.name
            )
        else:
            bound[param.keyword] = param.default
    return bound


def absolute_path(name: str, value: str) -> Path:
    """A path parameter: absolute, and without the NUL that no filesystem call accepts (it
    would raise ValueError deep in a handler, an internal error instead of the client's)."""
    if not value or "\0" in value or not Path(value).is_absolute():
        shown = value[:80]
        raise InvalidParams(f'invalid {name}: "{shown}" is not an absolute path', param=name)
    return Path(value)
