"""``phdserver calibrate INPUT...``: calibrate lights against the master library, no daemon
needed, with a progress bar; the same steps the daemon's ``start_light_calibration`` takes."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phdserver.errors import PhdError

from ._common import ProgressBar
from ._library_args import (
    INTERRUPTED,
    USAGE_ERROR,
    add_library_args,
    add_policy_args,
    data_dir,
    fail,
    first_missing,
    policy,
    positive_int,
    print_json,
)

if TYPE_CHECKING:
    from phdserver.pipeline.calibration_batch import BatchProgress, BatchReport

__all__ = ["DEFAULT_SUFFIX", "add_parser", "run"]

DEFAULT_SUFFIX = "_calibrated"
"""The pipeline's default (``calibration_io.DEFAULT_SUFFIX``), here so the parser needs no
import of it; a test keeps the two equal."""


def add_parser(commands: Any) -> None:
    """Add ``calibrate`` to the ``phdserver`` sub-command parser."""
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
    calibrate.add_argument("--workers", type=positive_int, metavar="N",
                           help="frames at once (the CPU count; 1 calibrates in this process)")
    add_policy_args(calibrate)
    add_library_args(calibrate, json_help="print the outcome (or the plan) as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        return _calibrate(args)
    except PhdError as exc:
        return fail(exc.message)
    except KeyboardInterrupt:  # while planning: nothing written yet
        return fail("interrupted before anything was written", INTERRUPTED)


def _calibrate(args: argparse.Namespace) -> int:
    from phdserver.operations.light_calibration import (
        LightCalibrationRequest,
        calibrate_planned,
        dry_run_summary,
        expand_inputs,
        plan_light_calibration,
    )
    from phdserver.pipeline.calibration_batch import FrameStatus, run_batch

    missing = first_missing(args.inputs)
    if missing is not None:
        return fail(f"{missing} does not exist", USAGE_ERROR)
    out = args.out.absolute() if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        return fail(f"{args.out} is not a directory", USAGE_ERROR)
    if "/" in args.suffix or "\\" in args.suffix:
        return fail("--suffix must not contain a path separator", USAGE_ERROR)
    lights = expand_inputs(args.inputs, args.suffix)
    if not lights:
        return fail("no FITS files in the directories given", USAGE_ERROR)
    request = LightCalibrationRequest(lights=tuple(lights), output_dir=out, suffix=args.suffix,
                                      overwrite=args.overwrite, policy=policy(args),
                                      workers=args.workers)
    library_dir = data_dir(args)
    if args.dry_run:
        plan = plan_light_calibration(library_dir, request, refresh=False)
        summary = dry_run_summary(plan, run_batch(plan, dry_run=True, overwrite=args.overwrite))
        if args.json:
            print_json({"dry_run": True, "total": len(lights), "plan": summary})
        else:
            _show_plan(summary)
        return 1 if summary["counts"]["failed"] else 0
    plan = plan_light_calibration(library_dir, request)
    report, interrupted = _run_with_bar(lambda **kw: calibrate_planned(plan, request, **kw))
    if args.json:
        print_json({"dry_run": False, "total": len(lights), **report.to_json()})
    else:
        _show_report(report)
    if interrupted:
        return INTERRUPTED
    return 1 if report.count(FrameStatus.FAILED) else 0


def _run_with_bar(run: Callable[..., BatchReport]) -> tuple[BatchReport, bool]:
    """Run the batch in a thread, a progress bar on stderr; Ctrl-C cancels it cleanly."""
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
    from phdserver.pipeline.calibration_batch import FrameStatus

    for outcome in report.outcomes:
        if outcome.status is FrameStatus.FAILED:
            print(f"failed: {outcome.light}: {outcome.reason}")
    counts = ", ".join(f"{report.count(s)} {s.value}" for s in (
        FrameStatus.DONE, FrameStatus.SKIPPED, FrameStatus.FAILED, FrameStatus.CANCELLED))
    print(f"{counts} in {report.elapsed_s:.1f} s")
