"""The rules a master must pass to fit a light, field by field (SPEC §6.2).

* **bias**: camera (``INSTRUME``), binning, frame size, gain, offset, readout mode;
* **dark**: the bias rules, plus the sensor temperature (``CCD-TEMP``, else ``SET-TEMP`` on both
  sides) within the policy's tolerance (the exposure is judged by
  :mod:`~phdserver.library.matching`, which may scale a dark of another exposure);
* **flat**: the bias rules, plus filter and optic (``TELESCOP``), and a night on or before the
  light's (**never a later one**) no more than ``max_flat_age_days`` before it.

Numbers are compared as numbers, text case-insensitively. **Unrecorded values**: a field the
light does not record is not compared; a field the light records and the master does not
rejects the master ("does not record its gain") unless ``MatchPolicy.accept_unrecorded``, and
then counts against it in the ranking. Each rule function returns the reasons a master fails
(none when it fits) and how many fields it does not record. Everything here is pure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from phdserver.library.fits_headers import FrameMetadata, FrameType
from phdserver.library.master_records import MasterRecord

__all__ = ["MatchPolicy", "Outcome", "Rules", "bias_rules", "dark_rules", "flat_rules",
           "temperatures"]

_NUMBER_ABS_TOL = 1e-6


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchPolicy:
    """How strictly masters must fit a light."""

    temperature_tolerance_c: float = 5.0
    allow_dark_scaling: bool = True
    max_flat_age_days: int | None = 30
    """A flat may be at most this many nights older than the light; None: any age."""
    require_bias: bool = False
    require_dark: bool = True
    require_flat: bool = True
    accept_unrecorded: bool = False
    """Accept masters that do not record a field the light has (ranked after those that do)."""

    def __post_init__(self) -> None:
        if not (self.temperature_tolerance_c >= 0):
            raise ValueError("temperature_tolerance_c must be >= 0")
        if self.max_flat_age_days is not None and self.max_flat_age_days < 0:
            raise ValueError("max_flat_age_days must be >= 0 or None")

    def required(self, frame_type: FrameType) -> bool:
        return {FrameType.BIAS: self.require_bias, FrameType.DARK: self.require_dark,
                FrameType.FLAT: self.require_flat}[frame_type]

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


Outcome = tuple[list[str], int]
Rules = Callable[[FrameMetadata, MasterRecord, MatchPolicy], Outcome]


def bias_rules(light: FrameMetadata, m: MasterRecord, policy: MatchPolicy) -> Outcome:
    checks = [
        _same_text("camera", light.camera, m.meta.camera, policy),
        _same_number("X binning", _bin(light.binning_x), _bin(m.meta.binning_x), policy),
        _same_number("Y binning", _bin(light.binning_y), _bin(m.meta.binning_y), policy),
        _same_size(light, m),
        _same_number("gain", light.gain, m.meta.gain, policy),
        _same_number("offset", light.offset, m.meta.offset, policy),
        _same_text("readout mode", light.readout_mode, m.meta.readout_mode, policy),
    ]
    return _collect(checks)


def dark_rules(light: FrameMetadata, m: MasterRecord, policy: MatchPolicy) -> Outcome:
    reasons, unrecorded = bias_rules(light, m, policy)
    more, extra = _collect([_temperature(light, m, policy)])
    return reasons + more, unrecorded + extra


def flat_rules(light: FrameMetadata, m: MasterRecord, policy: MatchPolicy) -> Outcome:
    reasons, unrecorded = bias_rules(light, m, policy)
    more, extra = _collect([
        _same_text("filter", light.filter, m.meta.filter, policy),
        _same_text("optic", light.optic, m.meta.optic, policy),
    ])
    reasons += more
    if light.night is None:
        reasons.append("the light has no date, so a flat's night cannot be checked")
    elif m.meta.night is None:
        reasons.append("the flat has no date (DATE-OBS)")
    else:
        age = (light.night - m.meta.night).days
        if age < 0:
            reasons.append(f"taken on the night of {m.meta.night}, after the light's "
                           f"({light.night}): never a flat from the future")
        elif policy.max_flat_age_days is not None and age > policy.max_flat_age_days:
            reasons.append(f"{age} nights older than the light (limit "
                           f"{policy.max_flat_age_days})")
    return reasons, unrecorded + extra


_Check = tuple[str | None, bool]  # (reason it fails, whether the master lacks the field)


def _collect(checks: list[_Check]) -> tuple[list[str], int]:
    return [r for r, _ in checks if r], sum(1 for _, lacks in checks if lacks)


def _same_text(label: str, light: str | None, master: str | None, policy: MatchPolicy) -> _Check:
    if light is None:
        return None, False
    if master is None:
        return _unrecorded(label, light, policy)
    if light.casefold() != master.casefold():
        return f"{label} {master!r}, the light's is {light!r}", False
    return None, False


def _same_number(label: str, light: float | None, master: float | None,
                 policy: MatchPolicy) -> _Check:
    if light is None:
        return None, False
    if master is None:
        return _unrecorded(label, light, policy)
    if not math.isclose(light, master, rel_tol=1e-9, abs_tol=_NUMBER_ABS_TOL):
        return f"{label} {master:g}, the light's is {light:g}", False
    return None, False


def _unrecorded(label: str, light_value: object, policy: MatchPolicy) -> _Check:
    if policy.accept_unrecorded:
        return None, True
    shown = f"{light_value:g}" if isinstance(light_value, float) else repr(light_value)
    return f"does not record its {label} (the light's is {shown})", True


def _bin(value: int | None) -> float:
    return 1.0 if value is None else float(value)  # FITS writers omit binning when unbinned


def _same_size(light: FrameMetadata, m: MasterRecord) -> _Check:
    if None in (light.width, light.height, m.meta.width, m.meta.height):
        return None, False
    if (light.width, light.height) != (m.meta.width, m.meta.height):
        return (f"size {m.meta.width}x{m.meta.height}, the light's is "
                f"{light.width}x{light.height}"), False
    return None, False


def temperatures(light: FrameMetadata, m: FrameMetadata) -> tuple[float, float, str] | None:
    if light.ccd_temp_c is not None and m.ccd_temp_c is not None:
        return light.ccd_temp_c, m.ccd_temp_c, "sensor temperature"
    if light.set_temp_c is not None and m.set_temp_c is not None:
        return light.set_temp_c, m.set_temp_c, "set temperature"
    return None


def _temperature(light: FrameMetadata, m: MasterRecord, policy: MatchPolicy) -> _Check:
    if light.ccd_temp_c is None and light.set_temp_c is None:
        return None, False
    pair = temperatures(light, m.meta)
    if pair is None:
        return _unrecorded("temperature", light.ccd_temp_c if light.ccd_temp_c is not None
                           else light.set_temp_c, policy)
    t_light, t_master, what = pair
    if abs(t_light - t_master) > policy.temperature_tolerance_c + 1e-9:
        return (f"{what} {t_master:g} °C, {abs(t_light - t_master):.1f} °C from the light's "
                f"{t_light:g} °C (tolerance {policy.temperature_tolerance_c:g} °C)"), False
    return None, False
