"""Benchmarks: ``python -m benchmarks`` (or ``make bench``) runs them and writes
``docs/performance.md``. Each ``bench_*.py`` module has ``run(quick: bool) -> str`` returning a
Markdown section that compares phdserver with its reference (real PHD2's measured figures,
ccdproc, plain numpy, the memory-bandwidth floor) measured in the same run."""
