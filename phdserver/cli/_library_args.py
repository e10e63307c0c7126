"""What ``phdserver masters`` and ``phdserver calibrate`` share: the data directory, the
matching policy flags, exit statuses and output helpers.

The parsers are built without importing the library (numpy, astropy and numba take ~0.9 s to
import): the handlers import it, so ``phdserver call`` and the others start fast.

Exit status: 0 when everything asked for was done; 1 when something was refused or failed (a
light that could not be calibrated, an import that failed, no match); 2 for a usage error (a
path that does not exist); 130 when a batch was interrupted with Ctrl-C (frames being written
finish first, and what was written stays).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phdserver.config import default_data_dir

if TYPE_CHECKING:
    from phdserver.library.matching import MatchPolicy

__all__ = ["INTERRUPTED", "USAGE_ERROR", "add_library_args", "add_policy_args", "data_dir",
           "fail", "first_missing", "policy", "positive_int", "print_json", "show_value"]

USAGE_ERROR = 2
INTERRUPTED = 130


def _flat_age(text: str) -> int | None:
    if text.lower() in ("any", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of days or 'any', got {text!r}") \
            from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def add_library_args(parser: argparse.ArgumentParser, *, json_help: str) -> None:
    parser.add_argument("--data-dir", type=Path, default=None, metavar="D",
                        help=f"data directory holding the library (the daemon's: "
                             f"{default_data_dir()})")
    parser.add_argument("--json", action="store_true", help=json_help)


def add_policy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--temperature-tolerance", type=_non_negative, default=5.0, metavar="C",
                        help="a dark's sensor temperature may differ by this, °C (5)")
    parser.add_argument("--no-dark-scaling", action="store_true",
                        help="never scale a dark of another exposure")
    parser.add_argument("--max-flat-age-days", type=_flat_age, default=30, metavar="D",
                        help="a flat may be this many nights older than the light, or 'any' "
                             "(30)")


def data_dir(args: argparse.Namespace) -> Path:
    return (args.data_dir or default_data_dir()).expanduser()


def policy(args: argparse.Namespace) -> MatchPolicy:
    from phdserver.library.matching import MatchPolicy

    return MatchPolicy(temperature_tolerance_c=args.temperature_tolerance,
                       allow_dark_scaling=not args.no_dark_scaling,
                       max_flat_age_days=args.max_flat_age_days)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def fail(message: str, status: int = 1) -> int:
    print(f"phdserver: {message}", file=sys.stderr)
    return status


def first_missing(paths: list[Path]) -> Path | None:
    return next((p for p in paths if not p.exists()), None)


def show_value(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:g}{unit}" if isinstance(value, float) else f"{value}{unit}"
