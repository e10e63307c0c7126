"""Settings: the TOML file, equipment profiles, the data directory, and CLI overrides.

A config file is optional. Without one phdserver has a single profile, id 1 "Simulator", with
the built-in simulator camera, which is what PHD2's own default profile looks like to clients.

Example::

    data_dir = "~/.phd2"            # share dark libraries and defect maps with PHD2 itself

    [server]
    listen = "127.0.0.1"            # "0.0.0.0" exposes the server; restrict it with `allow`
    instance = 1                    # port 4400 + instance - 1 unless `port` is given
    allow = ["192.168.1.0/24"]

    [log]
    format = "auto"                 # console on a terminal, else JSON; or "console", "json"
    level = "info"

    [[profile]]
    id = 1
    name = "Simulator"
    focal_length_mm = 1000
    camera = { type = "simulator", width = 1280, height = 960, time_scale = 1.0, seed = 0 }

    [[profile]]
    id = 2
    name = "ASI120 on the guide scope"
    focal_length_mm = 240
    camera = { type = "indi", host = "localhost", port = 7624, device = "ZWO CCD ASI120MM Mini" }

Command-line flags override the file; camera flags apply to the selected profile.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "CAMERA_TYPES",
    "CameraSettings",
    "Config",
    "ConfigError",
    "Profile",
    "ServerSettings",
    "default_data_dir",
    "load_config",
    "parse_size",
]

CAMERA_TYPES = ("simulator", "indi", "controller")
LOG_FORMATS = ("auto", "console", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """The configuration file or a flag is wrong; the message says where."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CameraSettings:
    """Which backend drives the camera, and its backend-specific options."""

    type: str = "simulator"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in CAMERA_TYPES:
            raise ConfigError(f"camera type must be one of {', '.join(CAMERA_TYPES)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """An equipment profile, as PHD2 has them: an id, a name and the camera it uses."""

    id: int
    name: str
    camera: CameraSettings = field(default_factory=CameraSettings)
    focal_length_mm: float = 1000.0
    pixel_size_um: float | None = None
    """Overrides the camera's own pixel size for the pixel scale (None: ask the camera)."""
    exposure_ms: int = 1000
    custom_exposure_ms: int = 30000
    """PHD2's last, user-defined entry of the exposure list."""
    gain: int = 95
    binning: int = 1
    cooler_setpoint_c: float = 10.0
    auto_load_darks: bool = True
    auto_load_defect_map: bool = True

    def with_camera(self, camera: CameraSettings, name: str | None = None) -> Profile:
        return replace(self, camera=camera, name=name or self.name)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    listen: str = "127.0.0.1"
    port: int | None = None
    instance: int = 1
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_line: int = 64 * 1024

    @property
    def effective_port(self) -> int:
        """PHD2's rule: 4400 + instance - 1, unless a port was given."""
        return self.port if self.port is not None else 4400 + self.instance - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    server: ServerSettings = field(default_factory=ServerSettings)
    profiles: tuple[Profile, ...] = (Profile(id=1, name="Simulator"),)
    selected_profile_id: int = 1
    data_dir: Path = field(default_factory=lambda: default_data_dir())
    log_format: str = "auto"
    log_level: str = "info"

    def __post_init__(self) -> None:
        ids = [p.id for p in self.profiles]
        if not ids:
            raise ConfigError("at least one profile is needed")
        if len(set(ids)) != len(ids):
            raise ConfigError("profile ids must be unique")
        if self.selected_profile_id not in ids:
            raise ConfigError(f"selected profile {self.selected_profile_id} does not exist")

    def profile(self, profile_id: int) -> Profile:
        for profile in self.profiles:
            if profile.id == profile_id:
                return profile
        raise KeyError(profile_id)

    @property
    def selected_profile(self) -> Profile:
        return self.profile(self.selected_profile_id)

    def with_selected_profile(self, profile: Profile) -> Config:
        profiles = tuple(profile if p.id == profile.id else p for p in self.profiles)
        return replace(self, profiles=profiles)


def parse_size(text: str) -> tuple[int, int]:
    """``"WIDTHxHEIGHT"`` (a command-line sensor size) as ``(width, height)``, 16..16384 each.

    Raises ``argparse.ArgumentTypeError`` so argparse prints the message as it is.
    """
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if not (16 <= width <= 16384 and 16 <= height <= 16384):
        raise argparse.ArgumentTypeError("width and height must be 16..16384")
    return width, height


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/phdserver``, i.e. ``~/.local/share/phdserver`` by default."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "phdserver"


def load_config(path: Path | None) -> Config:
    """Read a TOML config file (or the defaults when ``path`` is None)."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    return parse_config(document, source=str(path))


def parse_config(document: Mapping[str, Any], *, source: str = "config") -> Config:
    try:
        server = _parse_server(document.get("server", {}))
        log = document.get("log", {})
        profiles = tuple(_parse_profile(p) for p in document.get("profile", []))
        kwargs: dict[str, Any] = {"server": server}
        if profiles:
            kwargs["profiles"] = profiles
            kwargs["selected_profile_id"] = int(document.get("selected_profile", profiles[0].id))
        if "data_dir" in document:
            kwargs["data_dir"] = Path(str(document["data_dir"])).expanduser()
        if "format" in log:
            kwargs["log_format"] = _choice("log.format", log["format"], LOG_FORMATS)
        if "level" in log:
            kwargs["log_level"] = _choice("log.level", log["level"], LOG_LEVELS)
        return Config(**kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return str(value)


def _parse_server(table: Mapping[str, Any]) -> ServerSettings:
    allow = tuple(ipaddress.ip_network(str(a), strict=False) for a in table.get("allow", ()))
    port = table.get("port")
    return ServerSettings(
        listen=str(table.get("listen", "127.0.0.1")),
        port=None if port is None else int(port),
        instance=int(table.get("instance", 1)),
        allow=allow,
        max_line=int(table.get("max_line", 64 * 1024)),
    )


_PROFILE_KEYS = {
    "focal_length_mm": float,
    "pixel_size_um": float,
    "exposure_ms": int,
    "custom_exposure_ms": int,
    "gain": int,
    "binning": int,
    "cooler_setpoint_c": float,
    "auto_load_darks": bool,
    "auto_load_defect_map": bool,
}


def _parse_profile(table: Mapping[str, Any]) -> Profile:
    camera_table = dict(table.get("camera", {}))
    camera = CameraSettings(type=str(camera_table.pop("type", "simulator")), options=camera_table)
    extras = {key: cast(table[key]) for key, cast in _PROFILE_KEYS.items() if key in table}
    return Profile(id=int(table["id"]), name=str(table["name"]), camera=camera, **extras)
