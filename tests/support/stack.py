"""The service wired to the simulator, in-process (ASGI both ways) — fast flow tests.

End-to-end tests over real HTTP use :mod:`tests.support.live` instead. A service app here runs
as a :class:`Replica`: its transport behaves like the socket of a real process across a start,
a stop and a restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings
from app.simulator import Simulator, SimulatorConfig, approved, create_simulator_app
from app.simulator.config import DEFAULT_SALES_UNITS

ADMIN_KEY = "test-admin-key-0123456789"
# HTTPS: the simulator, like Vipps, registers no other webhook URL (in-process, no TLS is spoken).
SERVICE_URL = "https://pos.test"
SIM_URL = "http://vipps.test"
# The simulator's own keys of its second sales unit (each sales unit has its own, as at Vipps).
DKK_MSN = "654321"
DKK_KEYS = {
    "clientId": "sim-client-id-654321",
    "clientSecret": "sim-client-secret-654321",
    "subscriptionKey": "sim-subscription-key-654321",
}


def simulator_config(**overrides: Any) -> SimulatorConfig:
    """The simulator as the service's tests meet it: strict request checking, and sales units
    set up for this flow — PUSH_MESSAGE approved and Login enabled, what a merchant asks Vipps
    MobilePay for before going live (docs/operations.md). Everything else is the simulator's
    default, i.e. the real service's: HTTPS-only webhook URLs, keys per sales unit."""
    settings: dict[str, Any] = {
        "strict": True,
        "sales_units": tuple(approved(unit) for unit in DEFAULT_SALES_UNITS),
    }
    settings.update(overrides)
    return SimulatorConfig(**settings)


def service_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for a service talking to the simulator. Fast worker cadence for tests."""
    base: dict[str, Any] = {
        "environment": "test",
        "database": {"url": database_url},
        "vipps": {
            "base_url": SIM_URL,
            "client_id": "sim-client-id",
            "client_secret": "sim-client-secret",
            "subscription_key": "sim-subscription-key",
            "default_msn": "123456",
        },
        "webhooks": {"public_url": f"{SERVICE_URL}/webhooks/vipps"},
        # Tests make many deliberate 401s from one address and poll with the admin key far
        # faster than an operator; the throttling tests set their own limits.
        "security": {
            "admin_api_key": ADMIN_KEY,
            "auth_failures_per_source": 10_000,
            "admin_rate_limit_per_minute": 100_000,
        },
        "workers": {
            "outbox_poll_interval_seconds": 0.05,
            "reconcile_interval_seconds": 0.2,
            "reconcile_first_poll_seconds": 1.0,
            "reconcile_poll_every_seconds": 0.5,
            "inbox_retry_seconds": 0.2,
        },
        "logging": {"level": "INFO", "json_logs": True},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return Settings.model_validate(base)


class ReplicaStopped(httpx.ConnectError):
    """A request to a replica that is not running: what connecting to a stopped process gives."""


class Replica:
    """One in-process service app, started, stopped and restarted like a process under uvicorn.

    A real process only accepts connections between the end of its lifespan startup and the
    start of its shutdown, and its server lets the requests it accepted finish before it runs
    the lifespan shutdown. ``httpx.ASGITransport`` alone does neither: it calls the app whenever
    asked. A request (a simulator webhook delivery, typically) could then still be running in
    the app while, or after, the lifespan disposed the database engine; a disposed engine hands
    such a request a connection from a fresh pool, or takes it back into the pool it just
    emptied, and nobody closes it (asyncpg's ``ResourceWarning: unclosed connection``: F2 in
    docs/RELIABILITY.md). So requests go through :attr:`transport`, which refuses them with
    :class:`ReplicaStopped` unless the replica is running, and :meth:`stop` first stops
    accepting, then waits for the requests inside the app, then shuts the lifespan down.
    """

    def __init__(self, app: FastAPI, name: str = "replica") -> None:
        self.app = app
        self.name = name
        self.transport: httpx.AsyncBaseTransport = _ReplicaTransport(self)
        self._asgi = httpx.ASGITransport(app=app)
        self._lifespan: AsyncExitStack | None = None
        self._accepting = False
        self._inflight = 0
        self._idle: asyncio.Event | None = None

    @property
    def running(self) -> bool:
        return self._accepting

    @property
    def inflight(self) -> int:
        """Requests inside the app right now."""
        return self._inflight

    async def start(self) -> None:
        assert self._lifespan is None, f"{self.name} is already running"
        lifespan = AsyncExitStack()
        await lifespan.enter_async_context(self.app.router.lifespan_context(self.app))
        self._lifespan = lifespan
        self._accepting = True

    async def stop(self) -> None:
        """Refuse new requests, let those inside the app finish, then run the lifespan shutdown."""
        self._accepting = False
        while self._inflight:
            assert self._idle is not None
            await self._idle.wait()
        lifespan, self._lifespan = self._lifespan, None
        if lifespan is not None:
            await lifespan.aclose()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if not self._accepting:
            raise ReplicaStopped(f"{self.name}: connection refused (not running)", request=request)
        if self._idle is None:
            self._idle = asyncio.Event()
        self._inflight += 1
        self._idle.clear()
        try:
            # ASGITransport returns once the app has sent the whole response.
            return await self._asgi.handle_async_request(request)
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()


class _ReplicaTransport(httpx.AsyncBaseTransport):
    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.replica.handle(request)


class RoundRobin(httpx.AsyncBaseTransport):
    """Requests alternate between replicas, as behind a load balancer; one that refuses the
    connection (stopped) is skipped for the next, like nginx's ``proxy_next_upstream error``."""

    def __init__(self, replicas: list[Replica]) -> None:
        self.replicas = replicas
        self.turn = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.turn += 1
        refused: ReplicaStopped | None = None
        for step in range(len(self.replicas)):
            replica = self.replicas[(self.turn + step) % len(self.replicas)]
            try:
                return await replica.handle(request)
            except ReplicaStopped as exc:
                refused = exc
        assert refused is not None
        raise refused


@dataclass
class Stack:
    service: httpx.AsyncClient
    sim: httpx.AsyncClient
    simulator: Simulator
    app: FastAPI
    sim_app: FastAPI | None = None  # the simulator's ASGI app, for a second client to Vipps
    replica: Replica | None = None  # the service app as a process: requests inside it, ...
    admin: dict[str, str] = field(default_factory=lambda: {"Authorization": f"Bearer {ADMIN_KEY}"})

    async def register_till(
        self, till_id: str = "till-1", store_id: str = "store-1", msn: str = "123456"
    ) -> dict[str, Any]:
        response = await self.service.post(
            "/api/v1/tills",
            json={
                "tillId": till_id,
                "storeId": store_id,
                "locationDescription": f"Kasse {till_id}",
                "msn": msn,
            },
            headers=self.admin,
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def add_keys(self, msn: str = DKK_MSN, keys: dict[str, str] | None = None) -> None:
        """Give the service a sales unit's own keys (the simulator's for 654321 by default)."""
        response = await self.service.put(
            f"/api/v1/vipps-keys/{msn}", json=keys or DKK_KEYS, headers=self.admin
        )
        assert response.status_code == 200, response.text

    async def ensure_webhook(self, msn: str = "123456") -> None:
        response = await self.service.post(f"/api/v1/webhooks/{msn}/ensure", headers=self.admin)
        assert response.status_code == 200, response.text

    def till_headers(self, till: dict[str, Any]) -> dict[str, str]:
        return {"Authorization": f"Bearer {till['apiKey']}"}

    async def checkout(
        self, till: dict[str, Any], amount: int = 10000, **body: Any
    ) -> dict[str, Any]:
        response = await self.service.post(
            f"/api/v1/tills/{till['tillId']}/checkouts",
            json={"amount": amount, "currency": "NOK", **body},
            headers=self.till_headers(till),
        )
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    async def scan(self, till: dict[str, Any], phone: str | None = None) -> dict[str, Any]:
        body = {"phoneNumber": phone} if phone else {}
        response = await self.sim.post(f"/_sim/qr/{till['merchantQrId']}/scan", json=body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def get(self, till: dict[str, Any], checkout_id: str, **params: Any) -> dict[str, Any]:
        response = await self.service.get(
            f"/api/v1/checkouts/{checkout_id}", params=params, headers=self.till_headers(till)
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def wait_for(
        self,
        till: dict[str, Any],
        checkout_id: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        current = await self.get(till, checkout_id)
        while not predicate(current):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out; last seen {current['state']}: {current}")
            current = await self.get(
                till, checkout_id, wait=min(remaining, 2.0), version=current["version"]
            )
        return current

    async def wait_state(
        self, till: dict[str, Any], checkout_id: str, *states: str, timeout: float = 10.0
    ) -> dict[str, Any]:
        return await self.wait_for(till, checkout_id, lambda c: c["state"] in states, timeout)

    async def approve(self, reference: str) -> None:
        response = await self.sim.post(f"/_sim/payments/{reference}/approve", json={})
        assert response.status_code == 200, response.text

    async def decline(self, reference: str) -> None:
        response = await self.sim.post(f"/_sim/payments/{reference}/decline", json={})
        assert response.status_code == 200, response.text


@asynccontextmanager
async def in_process_stack(
    database_url: str,
    *,
    sim_config: SimulatorConfig | None = None,
    **settings_overrides: Any,
) -> AsyncIterator[Stack]:
    async with in_process_replicas(
        database_url, 1, sim_config=sim_config, **settings_overrides
    ) as (stack,):
        yield stack


@asynccontextmanager
async def in_process_replicas(
    database_url: str,
    count: int,
    *,
    sim_config: SimulatorConfig | None = None,
    **settings_overrides: Any,
) -> AsyncIterator[tuple[Stack, ...]]:
    """``count`` service apps on one database — each with its own LISTEN connection, workers,
    caches and throttle, as separate processes would have — and one simulator, which delivers
    webhooks to the first. ``stacks[i].service`` talks to replica ``i``."""
    settings = service_settings(database_url, **settings_overrides)
    config = sim_config or simulator_config()
    sim_app = create_simulator_app(config)
    simulator: Simulator = sim_app.state.simulator
    apps = [
        create_app(settings, vipps_transport=httpx.ASGITransport(app=sim_app)) for _ in range(count)
    ]
    replicas = [Replica(app, f"replica-{n}") for n, app in enumerate(apps)]
    # Deliveries from the simulator go straight into the first app (while it runs).
    simulator.webhooks.set_transport(replicas[0].transport)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(sim_app.router.lifespan_context(sim_app))
        for replica in replicas:
            await replica.start()
            stack.push_async_callback(replica.stop)
        sim = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=sim_app), base_url=SIM_URL)
        )
        stacks = []
        for replica in replicas:
            service = await stack.enter_async_context(
                httpx.AsyncClient(transport=replica.transport, base_url=SERVICE_URL)
            )
            stacks.append(
                Stack(
                    service=service,
                    sim=sim,
                    simulator=simulator,
                    app=replica.app,
                    sim_app=sim_app,
                    replica=replica,
                )
            )
        yield tuple(stacks)
