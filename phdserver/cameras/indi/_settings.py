"""Where an INDI camera is and how long to wait for it: :class:`IndiSettings`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["IndiSettings"]


@dataclass(frozen=True, slots=True, kw_only=True)
class IndiSettings:
    """Where the INDI camera is and how long to wait for it."""

    device: str
    host: str = "localhost"
    port: int = 7624
    chip: Literal["ccd", "guider"] = "ccd"
    timeout_s: float = 30.0
    """Added to the exposure time for every wait during a capture."""
    connect_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.device:
            raise ValueError("device must be a non-empty INDI device name")
        if self.chip not in ("ccd", "guider"):
            raise ValueError(f"chip must be 'ccd' or 'guider', not {self.chip!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1..65535, got {self.port}")
        if not (self.timeout_s > 0 and self.connect_timeout_s > 0):
            raise ValueError("timeouts must be > 0")

    @property
    def prefix(self) -> str:
        return "CCD_" if self.chip == "ccd" else "GUIDER_"

    @property
    def blob(self) -> str:
        return "CCD1" if self.chip == "ccd" else "CCD2"
