"""Shared fixtures: a running daemon with a small, fast simulator in a temporary data dir."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from phdserver.app import App
from tests.support import LineClient, make_config, running_server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[App, int]]:
    async with running_server(make_config(tmp_path)) as running:
        yield running


@pytest.fixture
async def client(server: tuple[App, int]) -> AsyncIterator[LineClient]:
    _, port = server
    client = await LineClient.connect(port)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs() -> None:
    """Only warnings and errors reach the test output."""
    from phdserver.logs import configure_logging

    configure_logging("console", "warning")
