"""Run every benchmark and write docs/performance.md with the date and the machine."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "performance.md"


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f"{pages / 2**30:.0f} GiB"
    except (ValueError, OSError):
        memory = "unknown memory"
    return (f"{cpu}, {os.cpu_count()} cores, {memory}; {platform.system()} "
            f"{platform.release()}; Python {platform.python_version()}, numpy {np.__version__}")


def discover() -> list[str]:
    return sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py"))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--only", action="append", help="run only these modules (bench_x)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    names = args.only or discover()
    sections: list[str] = []
    started = time.perf_counter()
    for name in names:
        print(f"== {name}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            sections.append(module.run(quick=args.quick).strip())
        except Exception:
            traceback.print_exc()
            sections.append(f"## {name}\n\nFailed in this run:\n\n```\n"
                            f"{traceback.format_exc()}```")
        print(f"   {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    header = (
        "# Performance\n\n"
        "Written by `make bench` (`python -m benchmarks`); every figure below was measured in "
        "that one run, with its reference measured beside it. The test suite contains no "
        "timing assertions: this file is where speed is checked.\n\n"
        f"- Date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"- Machine: {machine()}\n"
        f"- Mode: {'quick' if args.quick else 'full'}; total "
        f"{time.perf_counter() - started:.0f} s\n"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(header + "\n" + "\n\n".join(sections) + "\n")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
