"""PHD2's guiding methods, answered truthfully for a server that does not guide.

Every PHD2 method name is answered, never with "method not found": clients probe them during
their connect sequences. Getters report what is true with no mount and no guide star (not
calibrated, not paused, not settling, no lock position). Settings that clients write and read
back (lock-shift parameters, dec guide mode, guide output, variable delay) are stored so the
read-back is truthful. Actions that need a mount or a guide star are refused with code 1 and a
message that says why; parameters are validated first, with PHD2's messages, so a client's
mistakes are reported as such.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from phdserver.errors import InvalidParams, Refused

from ._params import Param
from ._registry import rpc_method

if TYPE_CHECKING:
    from phdserver.app import App

__all__ = ["GuidingMethods"]

NO_MOUNT = "phdserver does not guide: no mount is configured"
DEC_GUIDE_MODES = ("Off", "Auto", "North", "South")
AXES = ("ra", "x", "dec", "y")
DIRECTIONS = ("n", "s", "e", "w", "north", "south", "east", "west", "up", "down", "left", "right")


def _settle(value: dict[str, Any]) -> dict[str, float]:
    """PHD2 requires all three of pixels, time and timeout (numbers)."""
    out: dict[str, float] = {}
    for key in ("pixels", "time", "timeout"):
        number = value.get(key)
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise InvalidParams("invalid settle params", param="settle")
        out[key] = float(number)
    return out


def _rate(value: list[Any]) -> list[float]:
    if len(value) != 2 or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise InvalidParams("invalid rate: expected [ra_or_x, dec_or_y] numbers", param="rate")
    return [float(v) for v in value]


def _units(value: str) -> str:
    """PHD2 ignores case and also accepts "arc-sec/hr"."""
    canonical = {"arcsec/hr": "arcsec/hr", "arc-sec/hr": "arcsec/hr", "pixels/hr": "pixels/hr"}
    try:
        return canonical[value.lower()]
    except KeyError:
        raise InvalidParams(f'invalid units: "{value}", expected arcsec/hr or pixels/hr',
                            param="units") from None


def _lock_axes(value: str) -> str:
    canonical = {"ra/dec": "RA/Dec", "x/y": "X/Y"}
    try:
        return canonical[value.lower()]
    except KeyError:
        raise InvalidParams(f'invalid axes: "{value}", expected RA/Dec or X/Y',
                            param="axes") from None


def _one_of(name: str, choices: tuple[str, ...]) -> Callable[[str], str]:
    """A case-insensitive choice returning the canonical spelling (PHD2 ignores case)."""
    by_lower = {c.lower(): c for c in choices}

    def check(value: str) -> str:
        try:
            return by_lower[value.lower()]
        except KeyError:
            raise InvalidParams(f'invalid {name}: "{value}", expected one of '
                                f"{', '.join(choices)}", param=name) from None

    return check


def _direction(value: str) -> str:
    if value.lower() not in DIRECTIONS:
        raise InvalidParams(f'invalid direction: "{value}", expected one of N, S, E, W, '
                            "north, south, east, west, up, down, left, right",
                            param="direction")
    return value


def _axis(value: str) -> str:
    if value.lower() not in AXES:
        raise InvalidParams(f'invalid axis: "{value}", expected ra, dec, x or y', param="axis")
    return value


SETTLE = Param(name="settle", type="object", check=_settle)


@dataclass(frozen=True, slots=True, kw_only=True)
class _StoredSettings:
    lock_shift_enabled: bool = False
    lock_shift_rate: tuple[float, float] = (0.0, 0.0)
    lock_shift_units: str = "arcsec/hr"
    lock_shift_axes: str = "RA/Dec"
    dec_guide_mode: str = "Auto"
    guide_output_enabled: bool = True
    variable_delay: tuple[bool, float, float] = (False, 0.0, 0.0)


class GuidingMethods:
    def __init__(self, app: App) -> None:
        self._app = app
        self._settings = _StoredSettings()

    # -- truthful getters ------------------------------------------------------------------
    @rpc_method("get_calibrated")
    def get_calibrated(self) -> bool:
        """Always false: there is no mount to calibrate."""
        return False

    @rpc_method("get_paused")
    def get_paused(self) -> bool:
        """Always false: nothing is guiding, so nothing is paused."""
        return False

    @rpc_method("get_settling")
    def get_settling(self) -> bool:
        """Always false: no dither or guide start is settling."""
        return False

    @rpc_method("get_lock_position")
    def get_lock_position(self) -> None:
        """Always null: no guide star is locked."""
        return None

    @rpc_method("get_search_region")
    def get_search_region(self) -> int:
        """PHD2's default star search region, in pixels."""
        return 15

    @rpc_method("get_calibration_data", Param(name="which", type="string", default="mount",
                                              check=_one_of("which", ("mount", "ao"))))
    def get_calibration_data(self, which: str) -> dict[str, Any]:
        """Not calibrated (no mount)."""
        return {"calibrated": False}

    @rpc_method("get_lock_shift_enabled")
    def get_lock_shift_enabled(self) -> bool:
        """The stored lock-shift switch (it has no effect without guiding)."""
        return self._settings.lock_shift_enabled

    @rpc_method("set_lock_shift_enabled", Param(name="enabled", type="boolean"))
    def set_lock_shift_enabled(self, enabled: bool) -> int:
        """Store the lock-shift switch."""
        self._settings = replace(self._settings, lock_shift_enabled=enabled)
        return 0

    @rpc_method("get_lock_shift_params", Param(name="axes", type="any", default=None))
    def get_lock_shift_params(self, axes: Any) -> dict[str, Any]:
        """The stored lock-shift settings, in PHD2's shape."""
        s = self._settings
        return {"enabled": s.lock_shift_enabled, "rate": list(s.lock_shift_rate),
                "units": s.lock_shift_units, "axes": s.lock_shift_axes}

    @rpc_method(
        "set_lock_shift_params",
        Param(name="rate", type="array", check=_rate),
        Param(name="units", type="string", check=lambda u: _units(u)),
        Param(name="axes", type="string", check=lambda a: _lock_axes(a)),
        object_in_array=True,
    )
    def set_lock_shift_params(self, rate: list[float], units: str, axes: str) -> int:
        """Store lock-shift rates (used by comet-tracking sequences)."""
        self._settings = replace(self._settings, lock_shift_rate=(rate[0], rate[1]),
                                 lock_shift_units=units, lock_shift_axes=axes)
        return 0

    @rpc_method("get_dec_guide_mode")
    def get_dec_guide_mode(self) -> str:
        """The stored declination guide mode (PHD2's default is Auto)."""
        return self._settings.dec_guide_mode

    @rpc_method("set_dec_guide_mode",
                Param(name="mode", type="string", check=_one_of("mode", DEC_GUIDE_MODES)))
    def set_dec_guide_mode(self, mode: str) -> int:
        """Store the declination guide mode."""
        self._settings = replace(self._settings, dec_guide_mode=mode)
        return 0

    @rpc_method("get_guide_output_enabled")
    def get_guide_output_enabled(self) -> bool:
        """The stored guide-output switch."""
        return self._settings.guide_output_enabled

    @rpc_method("set_guide_output_enabled", Param(name="enabled", type="boolean"))
    def set_guide_output_enabled(self, enabled: bool) -> int:
        """Store the guide-output switch."""
        self._settings = replace(self._settings, guide_output_enabled=enabled)
        return 0

    @rpc_method("get_variable_delay_settings")
    def get_variable_delay_settings(self) -> dict[str, Any]:
        """The stored variable-delay settings, in PHD2's shape."""
        enabled, short, long = self._settings.variable_delay
        return {"Enabled": enabled, "ShortDelaySeconds": short, "LongDelaySeconds": long}

    @rpc_method(
        "set_variable_delay_settings",
        Param(name="Enabled", type="boolean", attr="enabled"),
        Param(name="ShortDelaySeconds", type="number", minimum=0, attr="short_delay"),
        Param(name="LongDelaySeconds", type="number", minimum=0, attr="long_delay"),
    )
    def set_variable_delay_settings(self, enabled: bool, short_delay: float,
                                    long_delay: float) -> int:
        """Store the variable-delay settings."""
        self._settings = replace(self._settings,
                                 variable_delay=(enabled, short_delay, long_delay))
        return 0

    # -- harmless no-ops -------------------------------------------------------------------
    @rpc_method("clear_calibration", Param(name="which", type="string", default="both"))
    def clear_calibration(self, which: str) -> int:
        """Nothing is calibrated, so there is nothing to clear; succeeds as PHD2 does."""
        if which.lower() not in ("mount", "ao", "both"):
            raise InvalidParams(f'invalid which: "{which}", expected mount, ao or both',
                                param="which")
        return 0

    @rpc_method("deselect_star")
    def deselect_star(self) -> int:
        """No star is selected; succeeds."""
        return 0

    # -- refused actions -------------------------------------------------------------------
    @rpc_method(
        "guide",
        SETTLE,
        Param(name="recalibrate", type="boolean", default=False),
        Param(name="roi", type="array", default=None),
    )
    def guide(self, settle: dict[str, float], recalibrate: bool, roi: Any) -> int:
        """Refused: guiding needs a mount."""
        raise Refused(f"cannot start guiding: {NO_MOUNT}")

    @rpc_method(
        "dither",
        Param(name="amount", type="number"),
        Param(name="raOnly", type="boolean", default=False, attr="ra_only"),
        SETTLE,
    )
    def dither(self, amount: float, ra_only: bool, settle: dict[str, float]) -> int:
        """Refused: dithering needs guiding."""
        raise Refused(f"cannot dither: {NO_MOUNT}")

    @rpc_method("set_paused", Param(name="paused", type="boolean"),
                Param(name="type", type="string", default=None, attr="pause_type"))
    def set_paused(self, paused: bool, pause_type: str | None) -> int:
        """Refused: only guiding can be paused."""
        raise Refused("cannot pause or resume: phdserver is not guiding")

    @rpc_method("find_star", Param(name="roi", type="array", default=None))
    def find_star(self, roi: Any) -> list[float]:
        """Refused with PHD2's message: phdserver does not select guide stars."""
        raise Refused("could not find star")

    @rpc_method("set_lock_position",
                Param(name="x", type="number"), Param(name="y", type="number"),
                Param(name="exact", type="boolean", default=True))
    def set_lock_position(self, x: float, y: float, exact: bool) -> int:
        """Refused: a lock position is for guiding."""
        raise Refused(f"cannot set a lock position: {NO_MOUNT}")

    @rpc_method("flip_calibration")
    def flip_calibration(self) -> int:
        """Refused: there is no calibration to flip."""
        raise Refused("cannot flip calibration: not calibrated (no mount)")

    @rpc_method("get_star_image", Param(name="size", type="integer", default=15, minimum=15))
    def get_star_image(self, size: int) -> dict[str, Any]:
        """Refused with PHD2's code 2: no star is selected."""
        raise Refused("no star selected", code=2)

    @rpc_method(
        "guide_pulse",
        Param(name="amount", type="integer"),
        Param(name="direction", type="string", check=lambda d: _direction(d)),
        Param(name="which", type="string", default="mount",
              check=_one_of("which", ("mount", "ao"))),
    )
    def guide_pulse(self, amount: int, direction: str, which: str) -> int:
        """Refused: there is no mount to pulse."""
        raise Refused(f"cannot send a guide pulse: {NO_MOUNT}")

    @rpc_method("get_algo_param_names",
                Param(name="axis", type="string", check=lambda a: _axis(a)))
    def get_algo_param_names(self, axis: str) -> list[str]:
        """Refused: guide algorithms belong to a mount."""
        raise Refused(f"no guide algorithm: {NO_MOUNT}")

    @rpc_method("get_algo_param", Param(name="axis", type="string", check=lambda a: _axis(a)),
                Param(name="name", type="string"))
    def get_algo_param(self, axis: str, name: str) -> float:
        """Refused: guide algorithms belong to a mount."""
        raise Refused(f"no guide algorithm: {NO_MOUNT}")

    @rpc_method("set_algo_param", Param(name="axis", type="string", check=lambda a: _axis(a)),
                Param(name="name", type="string"), Param(name="value", type="number"))
    def set_algo_param(self, axis: str, name: str, value: float) -> int:
        """Refused: guide algorithms belong to a mount."""
        raise Refused(f"no guide algorithm: {NO_MOUNT}")
