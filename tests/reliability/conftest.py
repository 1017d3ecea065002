"""Fixtures of the reliability suite: two service replicas as real processes on one Postgres.

Every test here is marked ``soak``: ``make test`` runs the short version of each, ``make soak``
(``VIPPS_POS_SOAK=1 pytest -m soak tests/reliability``) the long one (see :func:`scaled`).
Every service log a test produced is scanned for phone numbers, customer tokens and secrets when
the test ends.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import create_engine
from app.devstack import BackgroundServer
from app.settings import DatabaseSettings
from app.vipps.signature import format_ms_date, sign_webhook
from tests.reliability.support import FINAL_STATES, scan_logs_for_pii
from tests.support.live import ADMIN_KEY, ServiceProcess, live_simulator, live_simulator_config

MSN = "123456"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
# Every URL here is plain http on 127.0.0.1; one TLS context spares each client loading the CA file.
_TLS = ssl.create_default_context()


@dataclass
class Cluster:
    """A simulator over HTTP and service replicas sharing one database and one webhook URL."""

    sim_server: BackgroundServer
    replicas: list[ServiceProcess]
    database_url: str
    log_dir: Path
    known_secrets: set[str] = field(default_factory=set)
    tills: dict[str, dict[str, Any]] = field(default_factory=dict)
    _engine: AsyncEngine | None = None

    @property
    def sim(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.sim_server.url, timeout=30, verify=_TLS)

    def client(self, replica: int = 0) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.replicas[replica].url, timeout=60, verify=_TLS)

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = create_engine(DatabaseSettings(url=self.database_url, pool_size=2))
        return self._engine

    async def scalar(self, sql: str, **params: Any) -> Any:
        async with self.engine.connect() as conn:
            return (await conn.execute(text(sql), params)).scalar()

    async def ensure_webhook(self) -> str:
        """Register the MSN's webhook; returns its secret (also remembered as a known secret)."""
        async with self.client() as client:
            response = await client.post(f"/api/v1/webhooks/{MSN}/ensure", headers=ADMIN)
            assert response.status_code == 200, response.text
        async with self.sim as sim:
            listing = (await sim.get("/_sim/webhooks")).json()
        secrets = [r["secret"] for r in listing["registrations"] if r["msn"] == MSN]
        assert len(secrets) == 1, listing
        self.known_secrets.add(secrets[0])
        return str(secrets[0])

    async def register_till(self, till_id: str) -> dict[str, Any]:
        async with self.client() as client:
            response = await client.post(
                "/api/v1/tills",
                json={
                    "tillId": till_id,
                    "storeId": "store-1",
                    "locationDescription": f"Kasse {till_id}"[:36],
                    "msn": MSN,
                },
                headers=ADMIN,
            )
        assert response.status_code == 201, response.text
        till: dict[str, Any] = response.json()
        self.known_secrets.add(till["apiKey"])
        self.tills[till_id] = till
        return till

    @staticmethod
    def pos(till: dict[str, Any]) -> dict[str, str]:
        return {"Authorization": f"Bearer {till['apiKey']}"}

    async def scan(self, till: dict[str, Any]) -> None:
        async with self.sim as sim:
            response = await sim.post(f"/_sim/qr/{till['merchantQrId']}/scan", json={})
        assert response.status_code == 200, response.text
        self.known_secrets.add(response.json()["customerToken"])

    async def checkout(
        self, till: dict[str, Any], amount: int = 10000, replica: int = 0, **body: Any
    ) -> dict[str, Any]:
        async with self.client(replica) as client:
            response = await client.post(
                f"/api/v1/tills/{till['tillId']}/checkouts",
                json={"amount": amount, "currency": "NOK", **body},
                headers=self.pos(till),
            )
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    async def get(self, till: dict[str, Any], checkout_id: str, replica: int = 0) -> dict[str, Any]:
        async with self.client(replica) as client:
            response = await client.get(f"/api/v1/checkouts/{checkout_id}", headers=self.pos(till))
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def wait_for(
        self,
        till: dict[str, Any],
        checkout_id: str,
        predicate: Any,
        *,
        timeout: float = 30.0,
        replica: int = 0,
    ) -> dict[str, Any]:
        """Poll until ``predicate(checkout)``; tolerant of a replica being restarted."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            try:
                last = await self.get(till, checkout_id, replica)
            except httpx.TransportError:
                last = None
            if last is not None and predicate(last):
                return last
            await asyncio.sleep(0.1)
        raise AssertionError(f"checkout {checkout_id} not there after {timeout}s: {last}")

    async def wait_final(
        self, till: dict[str, Any], checkout_id: str, *, timeout: float = 30.0, replica: int = 0
    ) -> dict[str, Any]:
        return await self.wait_for(
            till,
            checkout_id,
            lambda c: c["state"] in FINAL_STATES,
            timeout=timeout,
            replica=replica,
        )

    async def ledger(self) -> list[dict[str, Any]]:
        async with self.sim as sim:
            entries: list[dict[str, Any]] = (await sim.get("/_sim/ledger")).json()
        return entries

    async def sim_payment(self, reference: str) -> dict[str, Any] | None:
        async with self.sim as sim:
            response = await sim.get(f"/_sim/payments/{reference}")
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        payment: dict[str, Any] = response.json()
        return payment

    def signed(self, secret: str, body: bytes, **overrides: str) -> dict[str, str]:
        """Headers Vipps would send for ``body`` to the registered URL (replica 0's)."""
        registered = httpx.URL(self.replicas[0].url)
        return {
            **sign_webhook(
                secret,
                path_and_query=f"/webhooks/vipps/{MSN}",
                host=f"{registered.host}:{registered.port}",
                body=body,
                ms_date=format_ms_date(datetime.now(UTC)),
            ),
            "Content-Type": "application/json",
            **overrides,
        }

    def log_files(self) -> list[Path]:
        return sorted(self.log_dir.glob("*.log"))


def start_cluster(
    database_url: str,
    sim_server: BackgroundServer,
    log_dir: Path,
    *,
    replicas: int = 2,
    extra_env: dict[str, str] | None = None,
) -> list[ServiceProcess]:
    """Start replicas that all register replica 0's URL at Vipps (one webhook per MSN)."""
    first = ServiceProcess(
        database_url, sim_server.url, log_dir, name="replica-0", extra_env=dict(extra_env or {})
    )
    processes = [first]
    for index in range(1, replicas):
        processes.append(
            ServiceProcess(
                database_url,
                sim_server.url,
                log_dir,
                name=f"replica-{index}",
                public_url=f"{first.url}/webhooks/vipps",
                extra_env=dict(extra_env or {}),
            )
        )
    first.public_url = f"{first.url}/webhooks/vipps"
    try:
        for process in processes:
            process.start()
    except BaseException:
        for process in processes:
            process.kill()
        raise
    return processes


@pytest.fixture
def sim_server() -> Iterator[BackgroundServer]:
    # Strict request checking is left to the in-process tests: it costs the load tests more CPU
    # than the service itself on a 2-core machine.
    with live_simulator(live_simulator_config(strict=False)) as server:
        yield server


@pytest.fixture
async def make_cluster(
    pg_url: str, sim_server: BackgroundServer, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Cluster]]]:
    """Start a :class:`Cluster` (``replicas=2``, ``extra_env={}``); stopped and its logs scanned
    for personal data and secrets when the test ends."""
    started: list[Cluster] = []

    async def make(replicas: int = 2, extra_env: dict[str, str] | None = None) -> Cluster:
        log_dir = tmp_path / f"logs-{len(started)}"
        processes = await asyncio.to_thread(
            start_cluster, pg_url, sim_server, log_dir, replicas=replicas, extra_env=extra_env
        )
        cluster = Cluster(sim_server, processes, pg_url, log_dir)
        cluster.known_secrets |= {ADMIN_KEY, "sim-client-secret", "sim-subscription-key"}
        started.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in started:
            for process in cluster.replicas:
                process.stop()
            if cluster._engine is not None:
                await cluster._engine.dispose()
    for cluster in started:
        findings = scan_logs_for_pii(cluster.log_files(), cluster.known_secrets)
        assert findings == [], findings
