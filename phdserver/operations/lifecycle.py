"""Every operation's states and the transitions between them, in one table (h11's "Rule 1").

An operation of a given kind moves forward through its stages, in order (it may skip ahead,
never go back), then ends in exactly one terminal status. ``completed`` is reachable only from
the last stage, so a client that sees ``completed`` knows the result was saved.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "CANCELLED_MESSAGES",
    "STAGES",
    "TERMINAL",
    "IllegalTransition",
    "Kind",
    "check_transition",
]


class Kind(enum.StrEnum):
    DARK_LIBRARY = "dark_library"
    DEFECT_MAP = "defect_map"
    LIGHT_CALIBRATION = "light_calibration"


COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
TERMINAL: Final = frozenset({COMPLETED, FAILED, CANCELLED})

STAGES: Final[dict[Kind, tuple[str, ...]]] = {
    Kind.DARK_LIBRARY: (
        "starting",
        "capturing_darks",
        "building_master_darks",
        "saving_library",
    ),
    Kind.DEFECT_MAP: (
        "starting",
        "capturing_darks",
        "building_master_dark",
        "building_filtered_dark",
        "analyzing_defects",
        "saving_map",
    ),
    Kind.LIGHT_CALIBRATION: (
        "starting",
        "matching_masters",
        "calibrating",
    ),
}


CANCELLED_MESSAGES: Final[dict[Kind, str]] = {
    Kind.DARK_LIBRARY: "cancelled - no changes have been made",
    Kind.DEFECT_MAP: "cancelled - no changes have been made",
    Kind.LIGHT_CALIBRATION: "cancelled - the frames calibrated so far are kept",
}
"""What a cancelled operation of each kind left behind, in PHD2's words where it has them."""


class IllegalTransition(RuntimeError):
    """A runner tried a transition the table forbids: a bug, not a user error."""


def statuses(kind: Kind) -> tuple[str, ...]:
    """All statuses of a kind, stages first, then the terminal ones."""
    return (*STAGES[kind], COMPLETED, FAILED, CANCELLED)


def check_transition(kind: Kind, old: str, new: str) -> None:
    """Raise :class:`IllegalTransition` unless ``old -> new`` is allowed for ``kind``."""
    stages = STAGES[kind]
    if old in TERMINAL:
        raise IllegalTransition(f"{kind} operation already {old}; cannot become {new}")
    if new in (FAILED, CANCELLED):
        return
    if new == COMPLETED:
        if old != stages[-1]:
            raise IllegalTransition(f"{kind} operation cannot complete from {old}")
        return
    if new not in stages:
        raise IllegalTransition(f"{new!r} is not a status of a {kind} operation")
    if stages.index(new) < stages.index(old):
        raise IllegalTransition(f"{kind} operation cannot go back from {old} to {new}")
