"""JSON-RPC method handlers, one module per area. Handlers validate, then call the app or
start an operation; they never do heavy work themselves."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._params import REQUIRED, Param, bind
from ._registry import MethodSpec, collect, handlers, rpc_method
from .app import AppMethods
from .calibration import CalibrationMethods
from .camera import CameraMethods
from .darks import DarkMethods
from .defects import DefectMethods
from .guiding import GuidingMethods
from .operations import OperationMethods

if TYPE_CHECKING:
    from phdserver.app import App

__all__ = [
    "REQUIRED",
    "MethodSpec",
    "Param",
    "bind",
    "build_method_table",
    "collect",
    "method_specs",
    "rpc_method",
]

AREAS = (AppMethods, CameraMethods, GuidingMethods, DarkMethods, DefectMethods,
         OperationMethods, CalibrationMethods)


def method_specs(app: App) -> dict[str, MethodSpec]:
    """Every method the server answers, by name."""
    return collect(*(area(app) for area in AREAS))


def build_method_table(app: App) -> dict[str, Any]:
    return handlers(method_specs(app).values())
