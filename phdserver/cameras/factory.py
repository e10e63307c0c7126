"""Create the camera a profile names, from its backend type and options.

Options come from the profile's ``camera`` table (or CLI flags). Unknown option names are an
error, so a typo in a config file is reported instead of silently ignored. Backends are
imported only when used, so a missing optional dependency affects only its own backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from phdserver.errors import CameraError

from .base import Camera

__all__ = ["AlertSink", "create_camera"]

AlertSink = Callable[[str, str], None]
"""Where a backend reports things the operator should see: (message, "info"|"warning"|...)."""

_SENSOR_OPTIONS = ("width", "height", "seed")


def create_camera(settings: Any, alert: AlertSink) -> Camera:
    """``settings`` has ``type`` and ``options`` (a :class:`phdserver.config.CameraSettings`)."""
    kind = settings.type
    options: Mapping[str, Any] = settings.options
    if kind == "simulator":
        return _simulator(options)
    if kind == "indi":
        return _indi(options, alert)
    if kind == "controller":
        return _controller(options, alert)
    raise CameraError(f"camera type {kind!r} is not available in this build")


def _checked(record: type, options: Mapping[str, Any], extra: tuple[str, ...] = ()) -> None:
    known = {f.name for f in dataclasses.fields(record)} | set(extra)
    unknown = sorted(set(options) - known)
    if unknown:
        raise CameraError(f"unknown camera option(s): {', '.join(unknown)}")


def _simulator(options: Mapping[str, Any]) -> Camera:
    from .sensor_model import SensorConfig
    from .simulator import SimulatorCamera, SimulatorSettings

    _checked(SimulatorSettings, options, _SENSOR_OPTIONS)
    sensor = SensorConfig(**{k: options[k] for k in _SENSOR_OPTIONS if k in options})
    rest = {k: v for k, v in options.items() if k not in _SENSOR_OPTIONS}
    return SimulatorCamera(SimulatorSettings(sensor=sensor, **rest))


def _controller(options: Mapping[str, Any], alert: AlertSink) -> Camera:
    from .controller import ControllerCamera, ControllerSettings

    _checked(ControllerSettings, options)
    if "image_dir" not in options:
        raise CameraError("controller camera: image_dir is required "
                          "(the directory the controller writes its images to)")
    try:
        settings = ControllerSettings(**options)
    except ValueError as exc:
        raise CameraError(f"controller camera: {exc}") from None
    return ControllerCamera(settings, on_alert=alert)


def _indi(options: Mapping[str, Any], alert: AlertSink) -> Camera:
    from .indi import IndiCamera, IndiSettings

    _checked(IndiSettings, options)
    return IndiCamera(IndiSettings(**options), on_alert=alert)
