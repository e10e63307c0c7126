"""``phdserver masters import|list|match|remove``: the master-frame library, no daemon needed.

They open the library of ``--data-dir`` (the daemon's default, so both see one library; SQLite's
WAL lets them share it while the daemon runs), with the same steps the daemon's methods take
(:mod:`phdserver.operations.light_calibration`), so both give the same answers.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from phdserver.errors import PhdError

from ._library_args import (
    INTERRUPTED,
    USAGE_ERROR,
    add_library_args,
    add_policy_args,
    data_dir,
    fail,
    first_missing,
    policy,
    print_json,
    show_value,
)

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """Add ``masters`` to the ``phdserver`` sub-command parser."""
    masters = commands.add_parser("masters", help="master frames library (no daemon needed)")
    actions = masters.add_subparsers(dest="action", required=True)
    imported = actions.add_parser("import", help="index master files or directories")
    imported.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    imported.add_argument("--type", choices=("bias", "dark", "flat"),
                          help="the type of every image, for headers that do not say")
    imported.add_argument("--recursive", action="store_true", help="include subdirectories")
    add_library_args(imported, json_help="print the outcomes as JSON")
    listed = actions.add_parser("list", help="list the masters and the state of their files")
    listed.add_argument("--type", choices=("bias", "dark", "flat", "dark_flat", "defect_map"))
    add_library_args(listed, json_help="print a JSON array")
    match = actions.add_parser("match", help="which masters a light would use, and why")
    match.add_argument("light", type=Path, metavar="LIGHT")
    add_policy_args(match)
    add_library_args(match, json_help="print the choice and the rejected candidates as JSON")
    removed = actions.add_parser("remove", help="forget a master (its file stays)")
    removed.add_argument("id", type=int, metavar="ID")
    add_library_args(removed, json_help="print the removed record as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        return {"import": _import, "list": _list, "match": _match,
                "remove": _remove}[args.action](args)
    except PhdError as exc:
        return fail(exc.message)
    except KeyboardInterrupt:  # SQLite transactions roll back; nothing is half-written
        return fail("interrupted", INTERRUPTED)


def _import(args: argparse.Namespace) -> int:
    from phdserver.library.fits_headers import FrameType
    from phdserver.library.masters_db import ImportStatus
    from phdserver.operations.light_calibration import import_masters

    missing = first_missing(args.paths)
    if missing is not None:
        return fail(f"{missing} does not exist", USAGE_ERROR)
    kind = FrameType(args.type) if args.type else None
    outcomes = import_masters(data_dir(args), [p.absolute() for p in args.paths],
                              frame_type=kind, recursive=args.recursive)
    if args.json:
        print_json([o.to_json() for o in outcomes])
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

    masters = list_masters(data_dir(args), FrameType(args.type) if args.type else None)
    if args.json:
        print_json(masters)
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
              f"{show_value(meta['exposure_s'], 's'):>7} {show_value(temp):>6} "
              f"{show_value(meta['gain']):>5} {show_value(meta['filter']):<8} "
              f"{show_value(meta['night']):<10}  {m['ref']}")
    return 0


def _match(args: argparse.Namespace) -> int:
    from phdserver.operations.light_calibration import NotALight, match_light

    light = args.light.absolute()
    if not light.exists():
        return fail(f"{args.light} does not exist", USAGE_ERROR)
    try:
        result = match_light(data_dir(args), light, policy(args))
    except NotALight as exc:
        return fail(exc.message, USAGE_ERROR)
    if args.json:
        print_json(result)
    else:
        _show_match(result)
    return 0 if result["problem"] is None else 1


def _show_match(result: dict[str, Any]) -> None:
    meta = result["meta"]
    print(f"light: {result['light']}")
    print(f"  exposure {show_value(meta['exposure_s'], ' s')}, "
          f"filter {show_value(meta['filter'])}, "
          f"sensor {show_value(meta['ccd_temp_c'], ' °C')}, night {show_value(meta['night'])}")
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
        record = remove_master(data_dir(args), args.id)
    except UnknownMaster as exc:
        return fail(exc.message)
    if args.json:
        print_json(record.to_json())
    else:
        print(f"removed #{record.id} {record.frame_type.value} {record.ref} (the file stays)")
    return 0
