"""End-to-end fixtures: the simulator over HTTP, the service as a real process on Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from app.devstack import BackgroundServer
from tests.support.live import ADMIN_KEY, ServiceProcess, live_simulator

pytestmark = pytest.mark.e2e


@pytest.fixture
def simulator() -> Iterator[BackgroundServer]:
    with live_simulator() as server:
        yield server


@pytest.fixture
def service(pg_url: str, simulator: BackgroundServer, tmp_path: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(pg_url, simulator.url, tmp_path / "logs", name="service-a").start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def admin(service: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=service.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture
async def sim(simulator: BackgroundServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=simulator.url, timeout=30) as client:
        yield client
