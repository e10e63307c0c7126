"""``phdserver scheduler sync DB``: accepted counts into N.I.N.A.'s Target Scheduler.

It reads the accepted-data database of ``--data-dir`` (written by ``phdserver accept``) and
the plugin's ``schedulerdb.sqlite``, prints what would change, and, unless ``--dry-run``,
backs the scheduler database up beside itself and writes the changes in one transaction
(:mod:`phdserver.pipeline.scheduler_sync`). Best run while N.I.N.A. is not planning; if it
changes a plan meanwhile, nothing is written and the command says so.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._library_args import USAGE_ERROR, add_library_args, data_dir, fail, print_json

__all__ = ["add_parser", "run"]


def _rig_profile(text: str) -> tuple[str, str]:
    rig, sep, profile = text.partition("=")
    if not sep or not rig or not profile:
        raise argparse.ArgumentTypeError("expected RIG=PROFILE_ID")
    return rig, profile


def add_parser(commands: Any) -> None:
    """Add ``scheduler`` to the ``phdserver`` sub-command parser."""
    scheduler = commands.add_parser("scheduler", help="N.I.N.A. Target Scheduler database")
    actions = scheduler.add_subparsers(dest="action", required=True)
    sync = actions.add_parser("sync", help="write accepted counts into the scheduler database")
    sync.add_argument("database", type=Path, metavar="TARGET_SCHEDULER_DB")
    sync.add_argument("--profile", type=_rig_profile, action="append", default=[],
                      metavar="RIG=PROFILE_ID",
                      help="the N.I.N.A. profile id of a rig's plans (repeat per rig)")
    sync.add_argument("--acquired", action="store_true",
                      help="also set acquired to the accepted count (the grader off)")
    sync.add_argument("--dry-run", action="store_true", help="show the changes; write nothing")
    add_library_args(sync, json_help="print the changes as JSON")


def run(args: argparse.Namespace) -> int:
    from phdserver.pipeline.accepted_db import AcceptedDB
    from phdserver.pipeline.scheduler_sync import SchedulerError, apply_sync, plan_sync

    try:
        counts = AcceptedDB(data_dir(args)).counts()
        plan = plan_sync(args.database.expanduser(), counts, dict(args.profile),
                         write_acquired=args.acquired)
        backup = None if args.dry_run else apply_sync(plan)
    except SchedulerError as exc:
        return fail(str(exc), USAGE_ERROR if "no such file" in str(exc) else 1)
    except KeyboardInterrupt:  # the transaction rolls back: nothing is half-written
        return fail("interrupted; nothing written", 130)
    if args.json:
        print_json({**plan.to_json(), "dry_run": args.dry_run,
                    "backup": None if backup is None else str(backup)})
        return 0
    for change in plan.changes:
        print(f"plan {change.plan_id}: {change.target} {change.filter} "
              f"{change.exposure_s:g} s: accepted {change.accepted_before} -> "
              f"{change.accepted_after} of {change.desired} desired")
    for count in plan.unmatched:
        print(f"no plan for {count.count} accepted {count.target} {count.filter} "
              f"{count.exposure_s:g} s ({count.rig})")
    for message in plan.ambiguous:
        print(f"ambiguous: {message}")
    verb = "would change" if args.dry_run else "changed"
    print(f"{verb} {len(plan.changes)} plan(s); {plan.unchanged} already up to date"
          + (f"; backup {backup}" if backup else ""))
    return 0
