"""The camera interface every backend implements, and the records it exchanges.

Cameras know nothing of JSON-RPC or of operations: they connect, describe themselves, take one
exposure at a time and can abort it. Whoever calls :meth:`Camera.capture` owns the camera for that
call (the app's camera lock guarantees a single caller).

Cancellation is the abort path: a backend's ``capture`` must stop waiting promptly when its trio
scope is cancelled and, where the hardware allows, abort the exposure in progress (in a ``finally``
under a short shielded ``move_on_after``), so that a cancelled build ends within a second.

Failures raise :class:`phdserver.errors.CameraError` with a message that names the backend and the
device ("INDI: device 'CCD Simulator' disappeared"), never a bare OSError.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Camera",
    "CameraInfo",
    "CoolerStatus",
    "Frame",
    "FrameType",
    "Subframe",
    "capture_problem",
]


class FrameType(enum.Enum):
    """What an exposure is for. Darks and biases are taken with the shutter closed where there
    is one (unlike PHD2's INDI driver, which never asks for FRAME_DARK)."""

    LIGHT = "light"
    DARK = "dark"
    BIAS = "bias"
    FLAT = "flat"

    @property
    def is_dark(self) -> bool:
        return self in (FrameType.DARK, FrameType.BIAS)


@dataclass(frozen=True, slots=True, kw_only=True)
class Subframe:
    """A region of interest in binned sensor pixels."""

    x: int
    y: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.x < 0 or self.y < 0 or self.width <= 0 or self.height <= 0:
            raise ValueError(f"invalid subframe {self!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class CameraInfo:
    """What a connected camera is. ``width``/``height`` are the full unbinned sensor size."""

    name: str
    width: int
    height: int
    bits_per_pixel: int = 16
    pixel_size_um: float = 3.75
    max_binning: int = 1
    has_shutter: bool = False
    has_cooler: bool = False
    gain_range: tuple[int, int] | None = None

    @property
    def saturation(self) -> int:
        """The largest pixel value, PHD2's ``SATURATE`` keyword: ``2**bpp - 1``."""
        return (1 << self.bits_per_pixel) - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """One exposure: a 2-D ``uint16`` array (row-major, ``data[y, x]``) and how it was taken."""

    data: np.ndarray
    exposure_ms: int
    frame_type: FrameType
    binning: int = 1
    gain: int | None = None
    offset: int | None = None
    temperature_c: float | None = None
    timestamp: float = 0.0
    """UTC seconds since the epoch at the start of the exposure."""
    subframe: Subframe | None = None
    headers: dict[str, object] = field(default_factory=dict)
    """Extra FITS keywords the backend knows (e.g. from an INDI BLOB's header)."""

    def __post_init__(self) -> None:
        if self.data.ndim != 2:
            raise ValueError(f"a frame must be 2-D, got shape {self.data.shape}")
        if self.data.dtype != np.uint16:
            raise ValueError(f"a frame must be uint16, got {self.data.dtype}")

    @property
    def width(self) -> int:
        return int(self.data.shape[1])

    @property
    def height(self) -> int:
        return int(self.data.shape[0])


@dataclass(frozen=True, slots=True, kw_only=True)
class CoolerStatus:
    """Sensor temperature and cooler state. ``setpoint_c``/``power_percent`` only when known."""

    temperature_c: float
    cooler_on: bool = False
    setpoint_c: float | None = None
    power_percent: float | None = None


@runtime_checkable
class Camera(Protocol):
    """A camera backend. All methods that talk to hardware are async and checkpoint."""

    @property
    def name(self) -> str:
        """The camera's display name, known before connecting (``get_current_equipment``)."""
        ...

    @property
    def connected(self) -> bool: ...

    @property
    def info(self) -> CameraInfo:
        """Valid while connected; raises :class:`CameraError` otherwise."""
        ...

    async def connect(self) -> None:
        """Connect (idempotent). Raises :class:`CameraError` when the camera cannot be reached."""
        ...

    async def disconnect(self) -> None:
        """Disconnect (idempotent); never raises for an already-broken connection."""
        ...

    async def capture(
        self,
        exposure_ms: int,
        *,
        frame_type: FrameType = FrameType.LIGHT,
        binning: int = 1,
        gain: int | None = None,
        subframe: Subframe | None = None,
    ) -> Frame:
        """Take one exposure and return it. Cancel the calling scope to abort it."""
        ...

    async def abort(self) -> None:
        """Abort an exposure in progress, if any (best effort)."""
        ...

    async def cooler_status(self) -> CoolerStatus:
        """Current temperature and cooler state (raises CameraError if there is no sensor)."""
        ...

    async def set_cooler(self, enabled: bool, setpoint_c: float | None = None) -> None:
        """Switch the cooler on (towards ``setpoint_c``) or off. Refused without a cooler."""
        ...


def capture_problem(*, width: int, height: int, max_binning: int, exposure_ms: int,
                    binning: int, subframe: Subframe | None) -> str | None:
    """What is wrong with a capture request on a ``width``×``height`` sensor; None when nothing.

    Every backend checks the same things before it touches its camera: a non-negative exposure,
    a binning it supports, and a subframe (in binned pixels) inside the binned sensor. Each
    backend raises :class:`~phdserver.errors.CameraError` with its own name before the answer.
    """
    if exposure_ms < 0:
        return f"exposure must be >= 0 ms, got {exposure_ms}"
    if not 1 <= binning <= max_binning:
        return f"binning {binning} not supported (1..{max_binning})"
    if subframe is not None:
        bw, bh = width // binning, height // binning
        if subframe.x + subframe.width > bw or subframe.y + subframe.height > bh:
            return (f"subframe x={subframe.x} y={subframe.y} width={subframe.width} "
                    f"height={subframe.height} lies outside the {bw}x{bh} sensor "
                    f"at binning {binning}")
    return None
