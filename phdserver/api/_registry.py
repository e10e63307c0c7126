"""Declare JSON-RPC methods next to their handlers and collect them into a method table.

A handler is a method of an area object (``CameraMethods``, ``DarkMethods``...) decorated with
:func:`rpc_method`, which records the wire name and the declared :class:`Param` list. The
collected :class:`MethodSpec` records feed both the dispatcher (via :func:`handlers`) and the
catalogue test that compares them with ``protocol/methods.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from ._params import Param, bind

__all__ = ["MethodSpec", "collect", "handlers", "rpc_method"]

F = TypeVar("F", bound=Callable[..., Any])

_SPEC_ATTRIBUTE = "__phdserver_rpc__"


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodSpec:
    name: str
    params: tuple[Param, ...]
    summary: str
    call: Callable[..., Any]
    object_in_array: bool = False
    """Also accept the named form wrapped in an array, ``[{...}]`` (PHD2 takes
    ``set_lock_shift_params`` that way)."""

    def handler(self) -> Callable[[Any], Any]:
        """A dispatcher handler: raw params in, the call's outcome out."""
        call = self.call
        params = self.params
        if not params:

            def no_params(raw: Any) -> Any:
                return call()

            return no_params

        if self.object_in_array:

            def unwrapping(raw: Any) -> Any:
                if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], dict):
                    raw = raw[0]
                return call(**bind(raw, params))

            return unwrapping

        def with_params(raw: Any) -> Any:
            return call(**bind(raw, params))

        return with_params


def rpc_method(name: str, *params: Param, summary: str = "",
               object_in_array: bool = False) -> Callable[[F], F]:
    """Mark a method as the handler of JSON-RPC method ``name``."""

    def mark(function: F) -> F:
        setattr(function, _SPEC_ATTRIBUTE, (name, tuple(params), summary, object_in_array))
        return function

    return mark


def collect(*areas: object) -> dict[str, MethodSpec]:
    """Every marked method of the given area objects, by wire name (duplicates are a bug)."""
    specs: dict[str, MethodSpec] = {}
    for area in areas:
        for attribute in dir(type(area)):
            function = getattr(type(area), attribute, None)
            marker = getattr(function, _SPEC_ATTRIBUTE, None)
            if marker is None:
                continue
            name, params, summary, object_in_array = marker
            if name in specs:
                raise ValueError(f"JSON-RPC method {name!r} declared twice")
            doc = (function.__doc__ or "").strip().split("\n\n")[0]
            specs[name] = MethodSpec(
                name=name,
                params=params,
                summary=summary or " ".join(doc.split()),
                call=getattr(area, attribute),
                object_in_array=object_in_array,
            )
    return specs


def handlers(specs: Iterable[MethodSpec]) -> dict[str, Callable[[Any], Any]]:
    return {spec.name: spec.handler() for spec in specs}
