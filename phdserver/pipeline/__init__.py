"""The night's batch steps, run on files after the imaging session: light calibration today
(and organising N.I.N.A.'s raw frames, culling, building masters, distributing them, accepting
and reporting as they land).

Every step here is synchronous and blocking, with no trio and no JSON-RPC: the CLI runs it in
the foreground with a progress bar, and ``phdserver.operations`` runs the same code as a
cancellable operation in a worker thread. Work on many frames is spread through a
``concurrent.futures.Executor`` (a local process pool, or a ``dask.distributed`` client for a
cluster). Files, indexes and formats come from ``phdserver.library``; pure array work from
``phdserver.imaging``.
"""

from phdserver.pipeline.calibration_batch import (
    BatchPlan,
    BatchProgress,
    BatchReport,
    find_lights,
    plan_with_library,
    run_batch,
)
from phdserver.pipeline.calibration_io import write_calibrated

__all__ = [
    "BatchPlan",
    "BatchProgress",
    "BatchReport",
    "find_lights",
    "plan_with_library",
    "run_batch",
    "write_calibrated",
]
