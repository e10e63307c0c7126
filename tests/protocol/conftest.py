"""A daemon shared by the property tests of this folder.

Hypothesis runs each example as a new call; a server owned by a per-test trio run would not
outlive the first, so this one lives in its own thread and trio run, for the whole module.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import pytest
import trio

from phdserver.app import App
from tests.support import make_config, running_server


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One daemon for every example, run by trio in a thread of its own."""
    ready: queue.Queue[tuple[int, trio.lowlevel.TrioToken, App]] = queue.Queue()
    data_dir = tmp_path_factory.mktemp("fuzz")

    async def main() -> None:
        async with running_server(make_config(data_dir)) as (app, port):
            ready.put((port, trio.lowlevel.current_trio_token(), app))
            await app.shutdown_requested.wait()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    port, token, app = ready.get(timeout=30)
    yield port
    token.run_sync_soon(app.shutdown_requested.set)
    thread.join(timeout=30)
