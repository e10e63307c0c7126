"""Turning FITS header values into numbers, text, longitudes and dates, as capture programs
really write them.

Headers from N.I.N.A., SGP, Ekos, APT and PHD2 disagree on types (``EXPTIME = '300.0'``),
units (``'-10C'``), sentinels (``-273.15``, ``1e+38``) and date forms; each function here
returns a clean value or None and never raises, so a strange card costs one field, not the
frame. Used by :mod:`.fits_headers`.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "MAX_ABS_VALUE",
    "MIN_TEMPERATURE_C",
    "date_obs",
    "parse_datetime",
    "plain_header",
    "to_longitude",
    "to_non_negative",
    "to_number",
    "to_positive_int",
    "to_temperature",
    "to_text",
]

MIN_TEMPERATURE_C = -273.0
"""A temperature at or below this is a "no sensor" sentinel (indi-allsky writes -273.15; old
N.I.N.A. wrote -1.8e308 for an unset cooler)."""
MAX_ABS_VALUE = 1e30
"""A larger magnitude is a sentinel (``1e+38``), not a value."""


def plain_header(header: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword -> value, first occurrence wins, commentary cards left out.

    An astropy header raises ``VerifyError`` for a card it cannot parse (N.I.N.A. 1.x wrote
    ``DATE-OBS`` unquoted); such a card is repaired the way astropy's ``silentfix`` does (the
    text is taken as a string), or skipped when even that fails.
    """
    cards = getattr(header, "cards", None)
    if cards is None:
        return {str(k).upper(): v for k, v in header.items()}
    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy's VerifyWarning while it repairs a card
        for card in cards:
            keyword = card.keyword
            if not keyword or keyword in out or keyword in {"COMMENT", "HISTORY"}:
                continue
            try:
                out[keyword] = card.value
            except Exception:  # astropy's VerifyError and friends: repair or skip
                try:
                    card.verify("silentfix")
                    out[keyword] = card.value
                except Exception:
                    continue
    return out


def to_number(value: object) -> float | None:
    """A finite float from a number or numeric string; None for anything else or a sentinel."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip().rstrip("sScC").strip())
        except ValueError:
            return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or abs(number) > MAX_ABS_VALUE:
        return None
    return number


def to_non_negative(value: object) -> float | None:
    number = to_number(value)
    return number if number is not None and number >= 0 else None


def to_temperature(value: object) -> float | None:
    number = to_number(value)
    return number if number is not None and number > MIN_TEMPERATURE_C else None


def to_positive_int(value: object) -> int | None:
    number = to_number(value)
    if number is None or number < 1 or number != int(number):
        return None
    return int(number)


def to_text(value: object) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    text = " ".join(str(value).split())
    return text or None


def to_longitude(value: object) -> float | None:
    """Degrees east from a number or a sexagesimal string (``'-68:10:48'``, ``'012 34 56 E'``)."""
    number = to_number(value)
    if number is not None:
        return number if -360.0 <= number <= 360.0 else None
    if not isinstance(value, str):
        return None
    text = value.strip().upper()
    west = text.endswith("W")
    parts = [p for p in re.split(r"[^0-9.+-]+", text.rstrip("EW")) if p]
    try:
        numbers = [float(p) for p in parts[:3]]
    except ValueError:
        return None
    if not numbers:
        return None
    sign = -1.0 if parts[0].startswith("-") or west else 1.0
    degrees = abs(numbers[0]) + sum(abs(n) / 60.0**i for i, n in enumerate(numbers[1:], 1))
    return sign * degrees if degrees <= 360.0 else None


def parse_datetime(value: object, *, assume_utc: bool) -> datetime | None:
    """ISO 8601 with any number of fractional digits and an optional ``Z`` or offset."""
    if not isinstance(value, str):
        return None
    m = re.fullmatch(
        r"\s*(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2})?)(?:\.(\d+))?)?"
        r"\s*(Z|[+-]\d{2}:?\d{2})?\s*",
        value,
    )
    if not m:
        return None
    text = m[1] + "T" + (m[2] or "00:00:00")
    if m[3]:
        text += "." + m[3][:6].ljust(6, "0")
    if m[4]:
        text += "+00:00" if m[4] == "Z" else m[4]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None and assume_utc:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC) if parsed.tzinfo is not None and assume_utc else parsed


def date_obs(header: Mapping[str, Any]) -> datetime | None:
    """``DATE-OBS`` as aware UTC; a date-only value takes its time from ``TIME-OBS``/``UT``."""
    raw = header.get("DATE-OBS")
    if isinstance(raw, str) and "T" not in raw.strip() and len(raw.strip()) == 10:
        time_part = header.get("TIME-OBS", header.get("UT"))
        if isinstance(time_part, str) and time_part.strip():
            raw = f"{raw.strip()}T{time_part.strip()}"
    return parse_datetime(raw, assume_utc=True)
