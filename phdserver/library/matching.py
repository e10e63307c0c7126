"""Choosing the bias, dark and flat for a light, and saying why every other master lost.

The field-by-field rules (camera, binning, size, gain, offset, readout mode; temperature for
darks; filter, optic and night for flats, **never a flat from a later night**) and the handling
of fields a light or a master does not record are in :mod:`~phdserver.library.match_rules`.
Here: a dark must have the light's exposure (equal to 1e-4 relative); when none has, a dark of
another exposure is *scaled* if scaling is allowed and a bias matched (the thermal signal is
``dark - bias``). When the light does not record a field, the candidates left may tie unless
something else separates them.

**Ranking keys** (smallest wins; every candidate that passes the rules is ranked):

* bias: (unrecorded fields, days between its night and the light's);
* dark with the light's exposure: (unrecorded fields, |ΔT|, days between nights);
* scaled dark (only when no exact dark passes): (unrecorded fields, |ΔT|, shorter than the light
  [0 for a longer dark: scaling *down* does not amplify its noise], |ln(t_dark/t_light)|, days);
* flat: (nights before the light's night, unrecorded fields).

|ΔT| is ranked in whole degrees (sensor readings jitter by tenths, which should not decide
between a 300 s and a 120 s dark); a master whose night is unknown counts as infinitely far. If
the best key is shared, any choice would be arbitrary, so :class:`AmbiguousMatch` is raised
naming the tied masters: remove one, or correct its header.
Everything here is pure (no I/O).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from phdserver.errors import LibraryError
from phdserver.library.fits_headers import FrameMetadata, FrameType
from phdserver.library.master_records import MasterRecord
from phdserver.library.match_rules import (
    MatchPolicy,
    Rules,
    bias_rules,
    dark_rules,
    flat_rules,
    temperatures,
)

__all__ = [
    "CALIBRATION_TYPES",
    "AmbiguousMatch",
    "MatchPolicy",
    "MatchResult",
    "Rejection",
    "match_masters",
]

CALIBRATION_TYPES = (FrameType.BIAS, FrameType.DARK, FrameType.FLAT)
_EXPOSURE_REL_TOL = 1e-4


class Rejection(NamedTuple):
    """A candidate that was not chosen, and why."""

    master: MasterRecord
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.master.id, "frame_type": self.master.frame_type.value,
                "ref": self.master.ref, "reason": self.reason}


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchResult:
    """The masters chosen for one light, and every other candidate with its reason."""

    chosen: dict[FrameType, MasterRecord | None]
    rejected: tuple[Rejection, ...]
    scaled_dark: bool = False
    dark_scale: float | None = None
    """``t_light / t_dark`` when a dark is chosen."""
    bias_applied: bool = False
    """Whether calibration subtracts the bias: not with an unscaled dark that contains it."""
    missing: tuple[FrameType, ...] = ()
    """Types the policy requires for which nothing matched."""
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.missing

    def reasons_for(self, frame_type: FrameType) -> list[Rejection]:
        return [r for r in self.rejected if r.master.frame_type is frame_type]

    def problem(self) -> str | None:
        """Why the light cannot be calibrated under the policy, in one sentence; None if it can."""
        if self.ok:
            return None
        parts = []
        for frame_type in self.missing:
            reasons = self.reasons_for(frame_type)
            detail = "; ".join(f"#{r.master.id} {r.master.name}: {r.reason}" for r in reasons[:5])
            more = f"; and {len(reasons) - 5} more" if len(reasons) > 5 else ""
            parts.append(f"no {frame_type.value} matches"
                         + (f" ({detail}{more})" if detail else " (none in the library)"))
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "chosen": {t.value: (r.to_json() if r else None) for t, r in self.chosen.items()},
            "rejected": [r.to_json() for r in self.rejected],
            "scaled_dark": self.scaled_dark,
            "dark_scale": self.dark_scale,
            "bias_applied": self.bias_applied,
            "missing": [t.value for t in self.missing],
            "notes": list(self.notes),
            "problem": self.problem(),
        }


class AmbiguousMatch(LibraryError):
    """Several masters fit equally well; picking one would be arbitrary."""

    def __init__(self, frame_type: FrameType, candidates: Sequence[MasterRecord], key: str) -> None:
        listed = ", ".join(f"#{c.id} {c.ref}" for c in candidates)
        super().__init__(
            f"{len(candidates)} {frame_type.value} masters match equally well ({key}): {listed}. "
            "Remove all but one from the library, or correct their headers."
        )
        self.frame_type = frame_type
        self.candidates = tuple(candidates)

    def to_json(self) -> dict[str, Any]:
        return {"frame_type": self.frame_type.value, "message": self.message,
                "candidates": [c.to_json() for c in self.candidates]}


class _KeyPart(NamedTuple):
    label: str
    value: float
    text: str


_Key = tuple[_KeyPart, ...]


def match_masters(
    light: FrameMetadata,
    candidates: Sequence[MasterRecord],
    policy: MatchPolicy | None = None,
    *,
    unusable: Mapping[int, str] | None = None,
) -> MatchResult:
    """Choose a bias, a dark and a flat for ``light`` from ``candidates``.

    ``unusable`` maps master ids to a reason they cannot be used (a failed
    :meth:`~phdserver.library.masters_db.MastersDB.verify`); those are rejected first.
    Masters of other types (dark flats, defect maps) are ignored.

    Raises
    ------
    AmbiguousMatch
        The best candidates of a type share the same ranking key.
    """
    policy = policy or MatchPolicy()
    unusable = unusable or {}
    rejected: list[Rejection] = []
    notes: list[str] = []
    pools: dict[FrameType, list[MasterRecord]] = {t: [] for t in CALIBRATION_TYPES}
    for master in candidates:
        if master.frame_type not in pools:
            continue
        if master.id in unusable:
            rejected.append(Rejection(master, f"unusable: {unusable[master.id]}"))
        else:
            pools[master.frame_type].append(master)

    bias = _choose(FrameType.BIAS, light, pools[FrameType.BIAS], policy, rejected, bias_rules,
                   _bias_key)
    dark, scale, scaled = _choose_dark(light, pools[FrameType.DARK], policy, bias, rejected)
    flat = _choose(FrameType.FLAT, light, pools[FrameType.FLAT], policy, rejected, flat_rules,
                   _flat_key)
    bias_applied = bias is not None and (dark is None or scaled or dark.meta.bias_subtracted)
    if bias is not None and not bias_applied:
        notes.append(f"bias #{bias.id} matches but is not applied: the dark has the light's "
                     "exposure and contains the bias")
    if scaled and dark is not None:
        notes.append(f"dark #{dark.id} scaled by {scale:.6g} (no dark of "
                     f"{light.exposure_s:g} s matches)")
    chosen = {FrameType.BIAS: bias, FrameType.DARK: dark, FrameType.FLAT: flat}
    missing = tuple(t for t in CALIBRATION_TYPES if chosen[t] is None and policy.required(t))
    for t in CALIBRATION_TYPES:
        if chosen[t] is None and not policy.required(t):
            notes.append(f"no {t.value}: that step is skipped")
    return MatchResult(chosen=chosen, rejected=tuple(rejected), scaled_dark=scaled,
                       dark_scale=scale, bias_applied=bias_applied, missing=missing,
                       notes=tuple(notes))


# --- ranking --------------------------------------------------------------------------------


def _nights_apart(light: FrameMetadata, m: MasterRecord) -> _KeyPart:
    if light.night is None or m.meta.night is None:
        return _KeyPart("days between nights", math.inf, "night unknown")
    days = abs((light.night - m.meta.night).days)
    return _KeyPart("days between nights", days,
                    f"{days} day{'' if days == 1 else 's'} from the light's night")


def _unrecorded_part(count: int) -> _KeyPart:
    return _KeyPart("unrecorded fields", count, f"{count} fields unrecorded")


def _delta_t(light: FrameMetadata, m: MasterRecord) -> _KeyPart:
    pair = temperatures(light, m.meta)
    if pair is None:
        known = light.ccd_temp_c is not None or light.set_temp_c is not None
        return _KeyPart("|ΔT| in whole degrees", math.inf if known else 0.0,
                    "temperature not compared")
    delta = abs(pair[0] - pair[1])
    return _KeyPart("|ΔT| in whole degrees", math.floor(delta + 0.5),
                    f"{delta:.1f} °C from the light")


def _bias_key(light: FrameMetadata, m: MasterRecord, unrecorded: int) -> _Key:
    return (_unrecorded_part(unrecorded), _nights_apart(light, m))


def _dark_key(light: FrameMetadata, m: MasterRecord, unrecorded: int) -> _Key:
    return (_unrecorded_part(unrecorded), _delta_t(light, m), _nights_apart(light, m))


def _scaled_dark_key(light: FrameMetadata, m: MasterRecord, unrecorded: int) -> _Key:
    t_light, t_dark = light.exposure_s or 0.0, m.meta.exposure_s or 0.0
    shorter = t_dark < t_light
    ratio = round(abs(math.log(t_dark / t_light)), 9) if t_light > 0 else math.inf
    return (_unrecorded_part(unrecorded), _delta_t(light, m),
            _KeyPart("shorter than the light", float(shorter),
                     f"{t_dark:g} s is {'shorter' if shorter else 'not shorter'} than the light"),
            _KeyPart("|ln(t_dark/t_light)|", ratio, f"exposure {t_dark:g} s"),
            _nights_apart(light, m))


def _flat_key(light: FrameMetadata, m: MasterRecord, unrecorded: int) -> _Key:
    days = (light.night - m.meta.night).days if light.night and m.meta.night else math.inf
    text = f"{days} night{'' if days == 1 else 's'} before the light"
    return (_KeyPart("nights before the light", days, text),
            _unrecorded_part(unrecorded))


def _choose(
    frame_type: FrameType,
    light: FrameMetadata,
    pool: Sequence[MasterRecord],
    policy: MatchPolicy,
    rejected: list[Rejection],
    rules: Rules,
    key: Callable[[FrameMetadata, MasterRecord, int], _Key],
) -> MasterRecord | None:
    ranked: list[tuple[_Key, MasterRecord]] = []
    for master in pool:
        reasons, unrecorded = rules(light, master, policy)
        if reasons:
            rejected.append(Rejection(master, "; ".join(reasons)))
        else:
            ranked.append((key(light, master, unrecorded), master))
    return _pick(frame_type, ranked, rejected)


def _pick(frame_type: FrameType, ranked: list[tuple[_Key, MasterRecord]],
          rejected: list[Rejection]) -> MasterRecord | None:
    if not ranked:
        return None
    ranked.sort(key=lambda item: tuple(p.value for p in item[0]))
    best_key, best = ranked[0]
    values = tuple(p.value for p in best_key)
    tied = [m for k, m in ranked if tuple(p.value for p in k) == values]
    if len(tied) > 1:
        raise AmbiguousMatch(frame_type, tied, ", ".join(p.text for p in best_key))
    for k, master in ranked[1:]:
        rejected.append(Rejection(master, _lost_because(k, best_key, best)))
    return best


def _lost_because(key: _Key, best_key: _Key, best: MasterRecord) -> str:
    for mine, theirs in zip(key, best_key, strict=True):
        if mine.value != theirs.value:
            return (f"fits, but ranked below #{best.id} {best.name} on {mine.label}: "
                    f"{mine.text} against {theirs.text}")
    return f"fits, but ranked below #{best.id} {best.name}"  # pragma: no cover - ties raise


def _choose_dark(
    light: FrameMetadata,
    pool: Sequence[MasterRecord],
    policy: MatchPolicy,
    bias: MasterRecord | None,
    rejected: list[Rejection],
) -> tuple[MasterRecord | None, float | None, bool]:
    """``(dark, t_light/t_dark, scaled)``: an exact-exposure dark first, else a scaled one."""
    if light.exposure_s is None:
        rejected.extend(Rejection(m, "the light records no exposure time") for m in pool)
        return None, None, False
    exact: list[tuple[_Key, MasterRecord]] = []
    other: list[tuple[_Key, MasterRecord]] = []
    for master in pool:
        reasons, unrecorded = dark_rules(light, master, policy)
        t_dark = master.meta.exposure_s
        if t_dark is None:
            reasons.append("does not record its exposure time")
        elif master.meta.bias_subtracted and bias is None:
            reasons.append("its bias was subtracted, and no bias matches to restore it")
        if reasons:
            rejected.append(Rejection(master, "; ".join(reasons)))
        elif t_dark is not None and math.isclose(t_dark, light.exposure_s,
                                                 rel_tol=_EXPOSURE_REL_TOL, abs_tol=1e-6):
            exact.append((_dark_key(light, master, unrecorded), master))
        else:
            other.append((_scaled_dark_key(light, master, unrecorded), master))
    if exact:
        for _, master in other:
            rejected.append(Rejection(master, f"exposure {master.meta.exposure_s:g} s; a dark of "
                                              f"the light's {light.exposure_s:g} s matches"))
        dark = _pick(FrameType.DARK, exact, rejected)
        return dark, _ratio(light, dark), False
    why_not = (None if policy.allow_dark_scaling and bias is not None and light.exposure_s > 0
               else "dark scaling is off" if not policy.allow_dark_scaling
               else "scaling needs a bias and none matches" if bias is None
               else "the light's exposure is 0 s")
    if why_not:
        for _, master in other:
            rejected.append(Rejection(master, f"exposure {master.meta.exposure_s:g} s, the "
                                              f"light's is {light.exposure_s:g} s; {why_not}"))
        return None, None, False
    dark = _pick(FrameType.DARK, other, rejected)
    return dark, _ratio(light, dark), dark is not None


def _ratio(light: FrameMetadata, dark: MasterRecord | None) -> float | None:
    if dark is None or not light.exposure_s or not dark.meta.exposure_s:
        return None if dark is None else 1.0
    return light.exposure_s / dark.meta.exposure_s
