"""Matching masters to a light: the rules, the ranking keys, and every rejection explained."""

from __future__ import annotations

import dataclasses
import itertools
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from phdserver.library.fits_headers import FrameMetadata, FrameType
from phdserver.library.masters_db import MasterRecord
from phdserver.library.matching import AmbiguousMatch, MatchPolicy, match_masters

_ids = itertools.count(1)

RIG: dict[str, Any] = {"camera": "ZWO ASI2600MM Pro", "optic": "RedCat", "binning_x": 1,
                       "binning_y": 1, "gain": 100.0, "offset": 50.0, "width": 40, "height": 32}


def light(**changes: Any) -> FrameMetadata:
    fields: dict[str, Any] = dict(RIG, frame_type=FrameType.LIGHT, exposure_s=300.0,
                                  ccd_temp_c=-9.8, set_temp_c=-10.0, filter="Ha",
                                  night=date(2024, 1, 15))
    fields.update(changes)
    return FrameMetadata(**fields)


def master(kind: FrameType, name: str, **changes: Any) -> MasterRecord:
    fields: dict[str, Any] = dict(RIG, frame_type=kind, is_master=True)
    fields.update(changes)
    return MasterRecord(id=next(_ids), frame_type=kind, path=Path(f"/lib/{name}.fits"),
                        meta=FrameMetadata(**fields), size_bytes=1, mtime_ns=1,
                        checksum=name, imported_at=datetime(2024, 1, 1, tzinfo=UTC))


def dark(name: str, exposure_s: float = 300.0, temp: float = -10.0, **kw: Any) -> MasterRecord:
    return master(FrameType.DARK, name, exposure_s=exposure_s, ccd_temp_c=temp, **kw)


def flat(name: str, night: date, filter_name: str = "Ha", **kw: Any) -> MasterRecord:
    return master(FrameType.FLAT, name, filter=filter_name, night=night, **kw)


def reason(result: Any, record: MasterRecord) -> str:
    found = [r.reason for r in result.rejected if r.master.id == record.id]
    assert len(found) == 1, (record.name, result.rejected)
    return found[0]


def test_distractors_lose_and_each_says_why() -> None:
    bias = master(FrameType.BIAS, "bias")
    bias_gain0 = master(FrameType.BIAS, "bias_gain0", gain=0.0)
    good = dark("dark300", temp=-10.1)
    gain0 = dark("dark300_gain0", gain=0.0)
    warm = dark("dark300_warm", temp=5.2)
    short = dark("dark120", exposure_s=120.0)
    right = flat("flat", date(2024, 1, 14))
    old = flat("flat_old", date(2024, 1, 5))
    future = flat("flat_future", date(2024, 1, 17))
    oiii = flat("flat_oiii", date(2024, 1, 15), "OIII")
    candidates = [bias, bias_gain0, good, gain0, warm, short, right, old, future, oiii]
    result = match_masters(light(), candidates, MatchPolicy())
    assert result.ok
    assert result.chosen[FrameType.DARK] == good
    assert result.chosen[FrameType.FLAT] == right
    assert result.chosen[FrameType.BIAS] == bias
    assert not result.scaled_dark
    assert result.dark_scale == 1.0
    assert not result.bias_applied  # the 300 s dark contains the bias
    assert "gain 0, the light's is 100" in reason(result, gain0)
    assert "gain 0, the light's is 100" in reason(result, bias_gain0)
    assert "15.0 °C from the light's -9.8 °C (tolerance 5 °C)" in reason(result, warm)
    assert "exposure 120 s; a dark of the light's 300 s matches" in reason(result, short)
    assert "ranked below" in reason(result, old)
    assert "10 nights before the light against 1 night before the light" in reason(result, old)
    assert "never a flat from the future" in reason(result, future)
    assert "filter 'OIII', the light's is 'Ha'" in reason(result, oiii)
    assert {r.master.id for r in result.rejected} == {c.id for c in candidates} - {
        bias.id, good.id, right.id}
    as_json = result.to_json()
    assert json.loads(json.dumps(as_json)) == as_json


def test_closer_temperature_wins_among_exact_darks() -> None:
    near, far = dark("near", temp=-10.0), dark("far", temp=-13.0)
    result = match_masters(light(ccd_temp_c=-10.2), [far, near],
                           MatchPolicy(require_flat=False))
    assert result.chosen[FrameType.DARK] == near
    assert "on |ΔT| in whole degrees: 2.8 °C from the light against 0.2 °C" in reason(
        result, far)


def test_tenths_of_a_degree_do_not_decide_between_scaled_darks() -> None:
    bias = master(FrameType.BIAS, "bias")
    d120, d300 = dark("d120", 120.0, temp=-9.9), dark("d300", 300.0, temp=-10.2)
    result = match_masters(light(exposure_s=600.0), [bias, d120, d300],
                           MatchPolicy(require_flat=False))
    assert result.chosen[FrameType.DARK] == d300


def test_dark_is_scaled_from_the_closest_longer_exposure_when_a_bias_exists() -> None:
    bias = master(FrameType.BIAS, "bias")
    d120, d600, d900 = dark("d120", 120.0), dark("d600", 600.0), dark("d900", 900.0)
    policy = MatchPolicy(require_flat=False)
    result = match_masters(light(), [bias, d120, d600, d900], policy)
    assert result.scaled_dark
    assert result.chosen[FrameType.DARK] == d600
    assert result.dark_scale == pytest.approx(0.5)
    assert result.bias_applied
    assert "shorter than the light" in reason(result, d120)
    assert "|ln(t_dark/t_light)|" in reason(result, d900)
    assert any("scaled by 0.5" in note for note in result.notes)


def test_no_scaling_without_bias_or_when_switched_off() -> None:
    d120 = dark("d120", 120.0)
    no_bias = match_masters(light(), [d120], MatchPolicy(require_flat=False))
    assert no_bias.chosen[FrameType.DARK] is None
    assert no_bias.missing == (FrameType.DARK,)
    assert "scaling needs a bias and none matches" in reason(no_bias, d120)
    assert "no dark matches" in (no_bias.problem() or "")
    bias = master(FrameType.BIAS, "bias")
    off = match_masters(light(), [bias, d120],
                        MatchPolicy(require_flat=False, allow_dark_scaling=False))
    assert off.chosen[FrameType.DARK] is None
    assert "dark scaling is off" in reason(off, d120)


def test_an_exact_tie_is_an_error_naming_the_candidates() -> None:
    a, b = dark("twin_a"), dark("twin_b")
    with pytest.raises(AmbiguousMatch) as info:
        match_masters(light(), [a, b], MatchPolicy(require_flat=False))
    assert info.value.frame_type is FrameType.DARK
    assert set(info.value.candidates) == {a, b}
    assert f"#{a.id}" in info.value.message
    assert f"#{b.id}" in info.value.message
    assert json.dumps(info.value.to_json())


def test_flat_rules_future_and_age() -> None:
    future = flat("future", date(2024, 1, 16))
    result = match_masters(light(), [dark("d"), future], MatchPolicy())
    assert result.chosen[FrameType.FLAT] is None
    assert result.missing == (FrameType.FLAT,)
    assert "never a flat from the future" in reason(result, future)
    old = flat("old", date(2023, 12, 1))
    aged = match_masters(light(), [dark("d2"), old], MatchPolicy(max_flat_age_days=30))
    assert "45 nights older than the light (limit 30)" in reason(aged, old)
    anyage = match_masters(light(), [dark("d3"), old], MatchPolicy(max_flat_age_days=None))
    assert anyage.chosen[FrameType.FLAT] == old
    undated = flat("undated", None)  # type: ignore[arg-type]
    missing_date = match_masters(light(), [dark("d4"), undated], MatchPolicy())
    assert "the flat has no date" in reason(missing_date, undated)
    no_light_date = match_masters(light(night=None), [dark("d5"), old], MatchPolicy())
    assert "the light has no date" in reason(no_light_date, old)


def test_same_night_flat_is_chosen_over_the_previous_night() -> None:
    tonight, yesterday = flat("tonight", date(2024, 1, 15)), flat("yday", date(2024, 1, 14))
    result = match_masters(light(), [dark("d"), yesterday, tonight], MatchPolicy())
    assert result.chosen[FrameType.FLAT] == tonight


def test_unrecorded_fields_reject_unless_accepted_then_rank_last() -> None:
    no_gain = dark("no_gain", gain=None)
    recorded = dark("recorded", temp=-14.0)
    strict = match_masters(light(), [no_gain], MatchPolicy(require_flat=False))
    assert "does not record its gain (the light's is 100)" in reason(strict, no_gain)
    lenient = MatchPolicy(require_flat=False, accept_unrecorded=True)
    alone = match_masters(light(), [no_gain], lenient)
    assert alone.chosen[FrameType.DARK] == no_gain
    both = match_masters(light(), [no_gain, recorded], lenient)
    assert both.chosen[FrameType.DARK] == recorded
    assert "unrecorded fields" in reason(both, no_gain)


def test_a_field_the_light_lacks_is_not_compared() -> None:
    d = dark("d", gain=0.0)
    result = match_masters(light(gain=None), [d], MatchPolicy(require_flat=False))
    assert result.chosen[FrameType.DARK] == d


def test_text_fields_ignore_case_and_numbers_ignore_representation() -> None:
    d = dark("d", camera="zwo asi2600mm pro", gain=100.0000000001)
    result = match_masters(light(), [d], MatchPolicy(require_flat=False))
    assert result.chosen[FrameType.DARK] == d


def test_set_temperature_is_used_when_a_sensor_temperature_is_missing() -> None:
    d = master(FrameType.DARK, "d", exposure_s=300.0, set_temp_c=10.0)
    result = match_masters(light(), [d], MatchPolicy(require_flat=False))
    assert "set temperature 10 °C, 20.0 °C from the light's -10 °C" in reason(result, d)


def test_unusable_masters_are_rejected_with_the_verification_message() -> None:
    d = dark("d")
    result = match_masters(light(), [d], MatchPolicy(require_flat=False),
                           unusable={d.id: "file missing"})
    assert reason(result, d) == "unusable: file missing"
    assert result.chosen[FrameType.DARK] is None


def test_bias_subtracted_dark_needs_a_bias_and_then_applies_it() -> None:
    clean = dark("clean", bias_subtracted=True)
    alone = match_masters(light(), [clean], MatchPolicy(require_flat=False))
    assert "its bias was subtracted" in reason(alone, clean)
    bias = master(FrameType.BIAS, "bias")
    with_bias = match_masters(light(), [clean, bias], MatchPolicy(require_flat=False))
    assert with_bias.chosen[FrameType.DARK] == clean
    assert with_bias.bias_applied


def test_binning_size_and_readout_mode_are_compared() -> None:
    bin2 = dark("bin2", binning_x=2, binning_y=2)
    big = dark("big", width=80)
    mode = dark("mode", readout_mode="Fast")
    result = match_masters(light(readout_mode="High Gain"), [bin2, big, mode],
                           MatchPolicy(require_flat=False))
    assert "X binning 2, the light's is 1" in reason(result, bin2)
    assert "size 80x32, the light's is 40x32" in reason(result, big)
    assert "readout mode 'Fast', the light's is 'High Gain'" in reason(result, mode)


def test_optional_steps_are_noted_and_other_types_ignored() -> None:
    defect = master(FrameType.DEFECT_MAP, "map")
    dark_flat = master(FrameType.DARK_FLAT, "df", exposure_s=300.0)
    result = match_masters(light(), [defect, dark_flat],
                           MatchPolicy(require_dark=False, require_flat=False))
    assert result.ok
    assert result.rejected == ()
    assert any("no flat: that step is skipped" in n for n in result.notes)


def test_policy_validation_and_json() -> None:
    with pytest.raises(ValueError, match="temperature"):
        MatchPolicy(temperature_tolerance_c=-1)
    as_json = MatchPolicy().to_json()
    assert as_json["temperature_tolerance_c"] == 5.0
    assert dataclasses.asdict(MatchPolicy()) == as_json
