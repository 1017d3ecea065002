"""End-to-end fixtures: the simulator over HTTP, the service as a real process on Postgres.

Every end-to-end test also proves that each request the service sent to Vipps validated against
the official specs: the simulator runs in strict mode and its violations must be empty at the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.devstack import BackgroundServer
from tests.support.live import ADMIN_KEY, ServiceProcess, live_simulator


@pytest.fixture
def simulator() -> Iterator[BackgroundServer]:
    with live_simulator() as server:
        yield server


@pytest.fixture(autouse=True)
def no_spec_violations(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test on the live simulator: every request the service made to Vipps matched
    the official specs (the simulator runs in strict mode)."""
    if "simulator" not in request.fixturenames:
        yield
        return
    # Requested here, before the test runs, so the simulator outlives this check.
    simulator: BackgroundServer = request.getfixturevalue("simulator")
    yield
    report = httpx.get(f"{simulator.url}/_sim/violations", timeout=10).json()
    assert report["strict"] is True
    assert report["violations"] == [], report["violations"]


@pytest.fixture
def service(pg_url: str, simulator: BackgroundServer, tmp_path: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(pg_url, simulator.url, tmp_path / "logs", name="service-a").start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def replica_b(
    pg_url: str, simulator: BackgroundServer, service: ServiceProcess, tmp_path: Path
) -> Iterator[ServiceProcess]:
    """A second replica on the same database. Vipps knows only replica A's webhook URL."""
    process = ServiceProcess(
        pg_url,
        simulator.url,
        tmp_path / "logs",
        name="service-b",
        public_url=f"{service.url}/webhooks/vipps",
    ).start()
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


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[AsyncEngine]:
    """Read-only look at what the replicas stored."""
    engine = create_async_engine(pg_url)
    try:
        yield engine
    finally:
        await engine.dispose()
