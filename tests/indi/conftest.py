"""Fixtures that run Debian's real ``indiserver`` for the INDI tests in a private network namespace.

How the isolation works (and why). indiserver cannot bind to loopback only, so each one runs in a
network namespace that has nothing but ``lo``, created with ``unshare --net``. We considered
running the whole INDI test module in a child pytest under ``unshare --net``, but that hides the
tests from the parent run and its report. Instead (see ``drivers/indiserver.py``):

* one namespace per session is held open by a small process started under ``unshare --net``;
  servers are started in it with ``nsenter``, so a test can kill indiserver and start it again
  on the same port and the client finds it there;
* the test process stays in the host namespace and reaches the servers through sockets created in
  the private namespace (a short-lived thread calls ``setns(2)``; the socket keeps its namespace).
  The camera under test gets that as its ``open_stream``: the production code path is otherwise
  untouched, and nothing listens on the host's network.

Each server gets its own ``-p`` port and ``-u`` socket path, a temporary ``HOME`` (the simulator
saves its config in ``~/.indi``), its own session (stopped with ``os.killpg``), and counts as
ready when its device has defined ``CONNECTION`` (no sleeps).

Availability. The tests need root, ``indi-bin`` (indiserver, indi_simulator_ccd), ``unshare`` and
``nsenter`` (util-linux) and ``ip`` (iproute2). When ``CI`` is set to true, anything missing
fails the tests; elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import itertools
import stat
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import trio

from phdserver.cameras.indi import IndiCamera, IndiSettings
from tests.indi.drivers import hotpixel_camera
from tests.indi.drivers.indiserver import (
    IndiServer,
    NetnsUnavailable,
    PrivateNetwork,
    missing_tools,
)
from tests.support import unavailable

SIMULATOR = "CCD Simulator"
HOTPIXEL = hotpixel_camera.DEVICE
_REPO = Path(__file__).resolve().parents[2]


def _unavailable(reason: str) -> None:
    unavailable("INDI tests", reason)


@pytest.fixture(scope="session")
def private_network() -> Iterator[PrivateNetwork]:
    missing = missing_tools("indi_simulator_ccd")
    if missing:
        _unavailable(
            f"missing {', '.join(missing)}: apt-get install indi-bin iproute2 util-linux"
        )
    try:
        net = PrivateNetwork.start()
    except NetnsUnavailable as exc:
        _unavailable(str(exc))
        raise
    try:
        yield net
    finally:
        net.close()


@pytest.fixture(scope="session")
def next_port() -> Callable[[], int]:
    """Ports for servers in the private namespace (nothing else listens there)."""
    counter = itertools.count(7624)
    return lambda: next(counter)


@pytest.fixture(scope="session")
def make_server(
    private_network: PrivateNetwork,
    next_port: Callable[[], int],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., IndiServer]]:
    """``make_server(driver, device)`` starts an indiserver; all are stopped at session end."""
    servers: list[IndiServer] = []

    def make(driver: str, device: str, **kwargs: object) -> IndiServer:
        port = next_port()
        base = tmp_path_factory.mktemp(f"indiserver-{port}")
        server = IndiServer(private_network, [driver], port=port, home=base / "home",
                            log_path=base / "indiserver.log", **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        server.start(device=device)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def hotpixel_driver(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An executable that indiserver can exec: it runs our test driver with this interpreter."""
    script = tmp_path_factory.mktemp("drivers") / "phd_hotpixel_ccd"
    driver = Path(hotpixel_camera.__file__).resolve()
    script.write_text(
        "#!/bin/sh\n"
        f'export PYTHONPATH="{_REPO}${{PYTHONPATH:+:$PYTHONPATH}}"\n'
        f'exec "{sys.executable}" "{driver}" "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(script)


@pytest.fixture(scope="session")
def simulator_server(make_server: Callable[..., IndiServer]) -> IndiServer:
    """One indi_simulator_ccd for the tests that leave it running."""
    return make_server("indi_simulator_ccd", SIMULATOR)


@pytest.fixture(scope="session")
def hotpixel_server(make_server: Callable[..., IndiServer], hotpixel_driver: str) -> IndiServer:
    return make_server(hotpixel_driver, HOTPIXEL)


@pytest.fixture
def own_simulator_server(make_server: Callable[..., IndiServer]) -> IndiServer:
    """A simulator server of the test's own, for tests that kill or crash it."""
    return make_server("indi_simulator_ccd", SIMULATOR)


class Alerts:
    """Collects ``on_alert`` calls and lets a test wait for one."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self._changed = trio.Event()

    def __call__(self, message: str, severity: str) -> None:
        self.seen.append((message, severity))
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, fragment: str, timeout_s: float = 15.0) -> tuple[str, str]:
        with trio.fail_after(timeout_s):
            while True:
                for alert in self.seen:
                    if fragment in alert[0]:
                        return alert
                await self._changed.wait()


def make_camera(
    server: IndiServer, device: str, alerts: Alerts | None = None, **settings: object
) -> IndiCamera:
    options: dict[str, object] = {
        "host": "127.0.0.1",
        "port": server.port,
        "timeout_s": 10.0,
        "connect_timeout_s": 10.0,
        **settings,
    }
    return IndiCamera(
        IndiSettings(device=device, **options),  # type: ignore[arg-type]
        on_alert=alerts,
        open_stream=server.net.open_stream,
    )


@pytest.fixture
def alerts() -> Alerts:
    return Alerts()


@pytest.fixture
async def sim_camera(simulator_server: IndiServer, alerts: Alerts) -> AsyncIterator[IndiCamera]:
    camera = make_camera(simulator_server, SIMULATOR, alerts)
    async with trio.open_nursery() as nursery:
        await nursery.start(camera.run)
        await camera.connect()
        yield camera
        nursery.cancel_scope.cancel()


@pytest.fixture
async def hotpixel_camera_connected(
    hotpixel_server: IndiServer, alerts: Alerts
) -> AsyncIterator[IndiCamera]:
    camera = make_camera(hotpixel_server, HOTPIXEL, alerts)
    async with trio.open_nursery() as nursery:
        await nursery.start(camera.run)
        await camera.connect()
        yield camera
        nursery.cancel_scope.cancel()
