"""Command line for the calibration library: ``phdserver masters ...`` and ``phdserver calibrate``.

These work **standalone**, without a daemon: they open the master library of ``--data-dir``
(the daemon's default, so both see one library; SQLite's WAL lets them share it while the
daemon runs) and calibrate in this process, with the same steps the daemon's
``start_light_calibration`` takes (:mod:`phdserver.operations.light_calibration`), so both
give the same answers.

The parser is built without importing the library (numpy, astropy and numba take ~0.9 s to
import): the handlers import it, so ``phdserver call`` and the others start as fast as before.

Exit status: 0 when everything asked for was done; 1 when something was refused or failed (a
light that could not be calibrated, an import that failed, no match); 2 for a usage error (a
path that does not exist); 130 when a batch was interrupted with Ctrl-C (frames being written
finish first, and what was written stays).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phdserver.config import default_data_dir
from phdserver.errors import PhdError

if TYPE_CHECKING:
    from phdserver.library.calibration_batch import BatchProgress, BatchReport
    from phdserver.library.matching import MatchPolicy

__all__ = ["add_calibration_commands", "calibration_handlers"]

Handler = Callable[[argparse.Namespace], int]
USAGE_ERROR = 2
INTERRUPTED = 130
DEFAULT_SUFFIX = "_calibrated"
"""The library's default (``calibration_io.DEFAULT_SUFFIX``), here so the parser needs no
import of it; a test keeps the two equal."""


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


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _common(parser: argparse.ArgumentParser, *, json_help: str) -> None:
    parser.add_argument("--data-dir", type=Path, default=None, metavar="D",
                        help=f"data directory holding the library (the daemon's: "
                             f"{default_data_dir()})")
    parser.add_argument("--json", action="store_true", help=json_help)


def _policy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--temperature-tolerance", type=_non_negative, default=5.0, metavar="C",
                        help="a dark's sensor temperature may differ by this, °C (5)")
    parser.add_argument("--no-dark-scaling", action="store_true",
                        help="never scale a dark of another exposure")
    parser.add_argument("--max-flat-age-days", type=_flat_age, default=30, metavar="D",
                        help="a flat may be this many nights older than the light, or 'any' "
                             "(30)")


def add_calibration_commands(commands: Any) -> None:
    """Add ``masters`` and ``calibrate`` to the ``phdserver`` sub-command parser."""
    masters = commands.add_parser("masters", help="master frames library (no daemon needed)")
    actions = masters.add_subparsers(dest="action", required=True)
    imported = actions.add_parser("import", help="index master files or directories")
    imported.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    imported.add_argument("--type", choices=("bias", "dark", "flat"),
                          help="the type of every image, for headers that do not say")
    imported.add_argument("--recursive", action="store_true", help="include subdirectories")
    _common(imported, json_help="print the outcomes as JSON")
    listed = actions.add_parser("list", help="list the masters and the state of their files")
    listed.add_argument("--type", choices=("bias", "dark", "flat", "dark_flat", "defect_map"))
    _common(listed, json_help="print a JSON array")
    match = actions.add_parser("match", help="which masters a light would use, and why")
    match.add_argument("light", type=Path, metavar="LIGHT")
    _policy_args(match)
    _common(match, json_help="print the choice and the rejected candidates as JSON")
    removed = actions.add_parser("remove", help="forget a master (its file stays)")
    removed.add_argument("id", type=int, metavar="ID")
    _common(removed, json_help="print the removed record as JSON")

    calibrate = commands.add_parser("calibrate", help="calibrate lights (no daemon needed)")
    calibrate.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                           help="light files, or directories of lights")
    calibrate.add_argument("--out", type=Path, metavar="DIR",
                           help="output directory (default: beside each light)")
    calibrate.add_argument("--dry-run", action="store_true",
                           help="show each light's masters (or why none fits); write nothing")
    calibrate.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    calibrate.add_argument("--suffix", default=DEFAULT_SUFFIX,
                           help=f"appended to output names ({DEFAULT_SUFFIX})")
    calibrate.add_argument("--workers", type=_positive, metavar="N",
                           help="frames at once (the CPU count; 1 calibrates in this process)")
    _policy_args(calibrate)
    _common(calibrate, json_help="print the outcome (or the plan) as JSON")


def calibration_handlers() -> dict[str, Handler]:
    return {"masters": masters_command, "calibrate": calibrate_command}


# --- helpers ------------------------------------------------------------------------------


def _data_dir(args: argparse.Namespace) -> Path:
    return (args.data_dir or default_data_dir()).expanduser()


def _policy(args: argparse.Namespace) -> MatchPolicy:
    from phdserver.library.matching import MatchPolicy

    return MatchPolicy(temperature_tolerance_c=args.temperature_tolerance,
                       allow_dark_scaling=not args.no_dark_scaling,
                       max_flat_age_days=args.max_flat_age_days)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _fail(message: str, status: int = 1) -> int:
    print(f"phdserver: {message}", file=sys.stderr)
    return status


def _missing(paths: list[Path]) -> Path | None:
    return next((p for p in paths if not p.exists()), None)


def _value(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:g}{unit}" if isinstance(value, float) else f"{value}{unit}"


# --- masters ------------------------------------------------------------------------------


def masters_command(args: argparse.Namespace) -> int:
    try:
        return {"import": _import, "list": _list, "match": _match,
                "remove": _remove}[args.action](args)
    except PhdError as exc:
        return _fail(exc.message)
    except KeyboardInterrupt:  # SQLite transactions roll back; nothing is half-written
        return _fail("interrupted", INTERRUPTED)


def _import(args: argparse.Namespace) -> int:
    from phdserver.library.fits_headers import FrameType
    from phdserver.library.masters_db import ImportStatus
    from phdserver.operations.light_calibration import import_masters

    missing = _missing(args.paths)
    if missing is not None:
        return _fail(f"{missing} does not exist", USAGE_ERROR)
    kind = FrameType(args.type) if args.type else None
    outcomes = import_masters(_data_dir(args), [p.absolute() for p in args.paths],
                              frame_type=kind, recursive=args.recursive)
    if args.json:
        _print_json([o.to_json() for o in outcomes])
    else:
        for o in outcomes:
            where = f"{o.path}#{o.hdu}" if o.hdu else str(o.path)
            print(f"{o.status.value:<9} {where}: {o.message}")
        counts = {s: sum(1 for o in outcomes if o.status is s) for s in ImportStatus}
        print(", ".join(f"{n} {s.value}" for s, n in counts.items() if n) or "nothing found")
    return 1 if any(o.status is ImportStatus.FAILED for o in outcomes) else 0


def _list(args: argparse.Namespace) -> int:
    from phdserver.library.fits_headers import FrameType
    from phdserver.operations.light_calibration import list_masters

    masters = list_masters(_data_dir(args), FrameType(args.type) if args.type else None)
    if args.json:
        _print_json(masters)
        return 0
    if not masters:
        print("no masters in the library")
        return 0
    print(f"{'id':>4}  {'type':<10} {'status':<8} {'exp':>7} {'temp':>6} {'gain':>5} "
          f"{'filter':<8} {'night':<10}  file")
    for m in masters:
        meta = m["meta"]
        temp = meta["ccd_temp_c"] if meta["ccd_temp_c"] is not None else meta["set_temp_c"]
        print(f"{m['id']:>4}  {m['frame_type']:<10} {m['status']:<8} "
              f"{_value(meta['exposure_s'], 's'):>7} {_value(temp):>6} "
              f"{_value(meta['gain']):>5} {_value(meta['filter']):<8} "
              f"{_value(meta['night']):<10}  {m['ref']}")
    return 0


def _match(args: argparse.Namespace) -> int:
    from phdserver.operations.light_calibration import NotALight, match_light

    light = args.light.absolute()
    if not light.exists():
        return _fail(f"{args.light} does not exist", USAGE_ERROR)
    try:
        result = match_light(_data_dir(args), light, _policy(args))
    except NotALight as exc:
        return _fail(exc.message, USAGE_ERROR)
    if args.json:
        _print_json(result)
    else:
        _show_match(result)
    return 0 if result["problem"] is None else 1


def _show_match(result: dict[str, Any]) -> None:
    meta = result["meta"]
    print(f"light: {result['light']}")
    print(f"  exposure {_value(meta['exposure_s'], ' s')}, filter {_value(meta['filter'])}, "
          f"sensor {_value(meta['ccd_temp_c'], ' °C')}, night {_value(meta['night'])}")
    for kind, chosen in result["chosen"].items():
        print(f"{kind}: " + (f"#{chosen['id']} {chosen['ref']}" if chosen else "none"))
    if result["scaled_dark"]:
        print(f"  the dark is scaled by {result['dark_scale']:.6g}")
    for note in result["notes"]:
        print(f"note: {note}")
    if result["rejected"]:
        print("rejected:")
        for r in result["rejected"]:
            print(f"  #{r['id']} {r['frame_type']} {r['ref']}: {r['reason']}")
    if result["problem"]:
        print(f"cannot calibrate: {result['problem']}")


def _remove(args: argparse.Namespace) -> int:
    from phdserver.library.masters_db import UnknownMaster
    from phdserver.operations.light_calibration import remove_master

    try:
        record = remove_master(_data_dir(args), args.id)
    except UnknownMaster as exc:
        return _fail(exc.message)
    if args.json:
        _print_json(record.to_json())
    else:
        print(f"removed #{record.id} {record.frame_type.value} {record.ref} (the file stays)")
    return 0


# --- calibrate ----------------------------------------------------------------------------


def calibrate_command(args: argparse.Namespace) -> int:
    try:
        return _calibrate(args)
    except PhdError as exc:
        return _fail(exc.message)
    except KeyboardInterrupt:  # while planning: nothing written yet
        return _fail("interrupted before anything was written", INTERRUPTED)


def _calibrate(args: argparse.Namespace) -> int:
    from phdserver.library.calibration_batch import FrameStatus, run_batch
    from phdserver.operations.light_calibration import (
        LightCalibrationRequest,
        calibrate_planned,
        dry_run_summary,
        expand_inputs,
        plan_light_calibration,
    )

    missing = _missing(args.inputs)
    if missing is not None:
        return _fail(f"{missing} does not exist", USAGE_ERROR)
    out = args.out.absolute() if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        return _fail(f"{args.out} is not a directory", USAGE_ERROR)
    if "/" in args.suffix or "\\" in args.suffix:
        return _fail("--suffix must not contain a path separator", USAGE_ERROR)
    lights = expand_inputs(args.inputs, args.suffix)
    if not lights:
        return _fail("no FITS files in the directories given", USAGE_ERROR)
    request = LightCalibrationRequest(lights=tuple(lights), output_dir=out, suffix=args.suffix,
                                      overwrite=args.overwrite, policy=_policy(args),
                                      workers=args.workers)
    data_dir = _data_dir(args)
    if args.dry_run:
        plan = plan_light_calibration(data_dir, request, refresh=False)
        summary = dry_run_summary(plan, run_batch(plan, dry_run=True, overwrite=args.overwrite))
        if args.json:
            _print_json({"dry_run": True, "total": len(lights), "plan": summary})
        else:
            _show_plan(summary)
        return 1 if summary["counts"]["failed"] else 0
    plan = plan_light_calibration(data_dir, request)
    report, interrupted = _run_with_bar(lambda **kw: calibrate_planned(plan, request, **kw))
    if args.json:
        _print_json({"dry_run": False, "total": len(lights), **report.to_json()})
    else:
        _show_report(report)
    if interrupted:
        return INTERRUPTED
    return 1 if report.count(FrameStatus.FAILED) else 0


def _run_with_bar(run: Callable[..., BatchReport]) -> tuple[BatchReport, bool]:
    """Run the batch in a thread, a progress bar on stderr; Ctrl-C cancels it cleanly."""
    from phdserver.cli import ProgressBar  # lazily: phdserver.cli imports this module
    from phdserver.operations.light_calibration import progress_message

    bar = ProgressBar()
    cancel = threading.Event()
    outcome: dict[str, Any] = {}

    def progress(p: BatchProgress) -> None:
        finished = p.done + p.skipped + p.failed
        bar({"progress": 100.0 * finished / max(p.total, 1), "status": "calibrating",
             "status_message": progress_message(p)})

    finished = threading.Event()

    def work() -> None:
        try:
            outcome["report"] = run(progress_callback=progress, cancel_event=cancel)
        except BaseException as exc:  # handed to the main thread below
            outcome["error"] = exc
        finally:
            finished.set()

    # Waiting on an Event, not Thread.join: Python 3.11's join, once interrupted by Ctrl-C,
    # marks a running thread as stopped and returns at once the next time.
    threading.Thread(target=work, name="phdserver-batch", daemon=True).start()
    interrupted = False
    try:
        finished.wait()
    except KeyboardInterrupt:
        interrupted = True
        cancel.set()
        bar.done()
        print("cancelling: frames being written finish, written outputs stay...",
              file=sys.stderr)
        finished.wait()
    bar.done()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["report"], interrupted


def _show_plan(summary: dict[str, Any]) -> None:
    for frame in summary["frames"]:
        name = Path(frame["light"]).name
        if frame["status"] == "planned":
            masters = ", ".join(f"{kind} {m['name']}" for kind, m in frame["masters"].items())
            scaled = f" (dark scaled by {frame['dark_scale']:.6g})" if frame["scaled_dark"] \
                else ""
            print(f"{name} -> {frame['output']}: {masters}{scaled}")
        else:
            print(f"{name}: {frame['status']}: {frame['reason'] or frame['problem']}")
    counts = summary["counts"]
    print(f"{counts['planned']} to calibrate, {counts['skipped']} skipped (output exists), "
          f"{counts['failed']} cannot be calibrated; nothing written (dry run)")


def _show_report(report: BatchReport) -> None:
    from phdserver.library.calibration_batch import FrameStatus

    for outcome in report.outcomes:
        if outcome.status is FrameStatus.FAILED:
            print(f"failed: {outcome.light}: {outcome.reason}")
    counts = ", ".join(f"{report.count(s)} {s.value}" for s in (
        FrameStatus.DONE, FrameStatus.SKIPPED, FrameStatus.FAILED, FrameStatus.CANCELLED))
    print(f"{counts} in {report.elapsed_s:.1f} s")
