"""How to reach a camera controller and how long to wait for it: :class:`ControllerSettings`,
from the command line or the TOML profile, and the transport they describe."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from phdserver.cameras.controller._protocol import (
    CAMERA_TIMEOUT_S,
    CLEAR_TIME_S,
    COMMAND_DELAY_S,
    COMMAND_PORT,
    READOUT_TIME_S,
    STATUS_POLL_S,
    STATUS_PORT,
    TRANSFER_TIME_S,
    header_command,
)
from phdserver.cameras.controller._transport import SerialTransport, TcpTransport, Transport

__all__ = ["ControllerSettings", "make_transport"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ControllerSettings:
    """Where the controller is and how long to wait for it. Field names are the keys of a
    profile's ``camera = {type = "controller", ...}`` table. Times are seconds."""

    image_dir: str
    """The directory where the controller writes its images, as the daemon sees it."""
    host: str = "localhost"
    port: int = COMMAND_PORT
    status_port: int = STATUS_PORT
    """0: the controller has no status port; status then goes to the command port and an
    exposure is waited for by its reply alone, as on a serial line."""
    url: str | None = None
    """A serial line instead of TCP: a device path, ``socket://host:port``, a pty path."""
    baudrate: int = 115200
    name: str = "Controller"
    width: int | None = None
    height: int | None = None
    bits_per_pixel: int = 16
    pixel_size_um: float = 3.75
    has_shutter: bool = True
    image_name: str = "{fileroot}.fits"
    """The image's file name in ``image_dir``; ``{fileroot}`` is the name sent with expose."""
    keep_images: bool = True
    """False: delete each image from ``image_dir`` once it has been read."""
    headers: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    """Extra FITS keywords sent with ``header`` before every exposure (OBSERVER...)."""
    timeout_s: float = CAMERA_TIMEOUT_S
    """Reply timeout of status, header and the other short commands."""
    clear_time_s: int = CLEAR_TIME_S
    readout_time_s: float = READOUT_TIME_S
    transfer_time_s: float = TRANSFER_TIME_S
    image_timeout_s: float = 30.0
    """How long the image may take to appear, complete, after the expose reply."""
    command_delay_s: float = COMMAND_DELAY_S
    poll_interval_s: float = STATUS_POLL_S
    abort_timeout_s: float = 1.0
    """The most a cancelled capture waits for ``clear`` to be answered (never scaled)."""
    time_scale: float = 1.0
    """Multiplies every wait above and the exposure sleep; 1.0 for hardware. Match the
    simulated controller's ``--sim-time-scale``."""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1..65535, got {self.port}")
        if not 0 <= self.status_port < 65536:
            raise ValueError(f"status_port must be 1..65535 (0: none), got {self.status_port}")
        if not self.image_dir:
            raise ValueError("image_dir must name the directory the controller writes to")
        if self.url is not None and not self.url:
            raise ValueError("url must be a device path or URL when given")
        if (self.width is None) != (self.height is None):
            raise ValueError("give both width and height, or neither")
        if self.width is not None and not (0 < self.width <= 65536 and 0 < self.height <= 65536):
            raise ValueError(f"invalid sensor size {self.width}x{self.height}")
        if not 1 <= self.bits_per_pixel <= 16:
            raise ValueError(f"bits_per_pixel must be 1..16, got {self.bits_per_pixel}")
        if "{fileroot}" not in self.image_name or "/" in self.image_name.replace("{fileroot}", ""):
            raise ValueError("image_name must contain {fileroot} and no directory")
        times = (self.timeout_s, self.readout_time_s, self.transfer_time_s, self.image_timeout_s,
                 self.abort_timeout_s, self.time_scale)
        if not all(t > 0 and math.isfinite(t) for t in times):
            raise ValueError("timeouts and time_scale must be finite and > 0")
        if self.command_delay_s < 0 or self.poll_interval_s <= 0 or self.clear_time_s < 0:
            raise ValueError("command_delay_s and clear_time_s must be >= 0, "
                             "poll_interval_s > 0")
        for key, value in self.headers.items():
            header_command(key, value)  # ValueError names the bad keyword or value

    def scaled(self, seconds: float) -> float:
        return seconds * self.time_scale


def make_transport(settings: ControllerSettings) -> Transport:
    delay = settings.scaled(settings.command_delay_s)
    if settings.url is not None:
        return SerialTransport(settings.url, baudrate=settings.baudrate, delay_s=delay)
    return TcpTransport(settings.host, settings.port, settings.status_port, delay_s=delay)
