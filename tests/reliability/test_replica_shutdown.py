"""Restarting an in-process replica leaves no database connection open (F2, docs/RELIABILITY.md).

The stateful test restarts replicas while the simulator delivers webhooks into them. With a bare
``httpx.ASGITransport`` a delivery could still run inside the app while, or after, its lifespan
disposed the database engine: the request then took a connection from a fresh pool (or gave one
back to the pool just emptied) that nobody closed, and the garbage collector reported
``ResourceWarning: unclosed connection <asyncpg.connection.Connection …>``. A replica now stops
like a process under uvicorn (:class:`tests.support.stack.Replica`): it refuses new requests,
lets those inside finish, then shuts its lifespan down.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
from fastapi import Request

from app.main import create_app
from app.simulator import Simulator, create_simulator_app
from tests.support.stack import (
    ADMIN_KEY,
    SERVICE_URL,
    SIM_URL,
    Replica,
    RoundRobin,
    service_settings,
    simulator_config,
)
from tests.support.waiting import eventually

pytestmark = [pytest.mark.soak, pytest.mark.timeout(120)]

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MSN = "123456"


def unclosed_resources() -> list[str]:
    """What the garbage collector finds left open (asyncpg connections, their sockets)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    return [str(w.message)[:160] for w in caught if issubclass(w.category, ResourceWarning)]


@dataclass
class Replicas:
    replicas: list[Replica]
    clients: list[httpx.AsyncClient]
    sim: httpx.AsyncClient
    simulator: Simulator


@asynccontextmanager
async def replicas(
    database_url: str, count: int, *, hold: asyncio.Event | None = None
) -> AsyncIterator[Replicas]:
    """``count`` replicas on one database and one simulator whose webhooks go round-robin.

    With ``hold``, every app has ``GET /_test/hold``: it takes the app's services on arrival,
    like every endpoint does (``app/api/deps.py``), waits for ``hold`` and then reads the
    database — a request that is inside the app across a restart.
    """
    sim_app = create_simulator_app(simulator_config())
    simulator: Simulator = sim_app.state.simulator
    settings = service_settings(database_url, database={"pool_size": 2, "max_overflow": 2})
    apps = [
        create_app(settings, vipps_transport=httpx.ASGITransport(app=sim_app)) for _ in range(count)
    ]
    if hold is not None:
        for app in apps:

            async def held(request: Request) -> dict[str, int]:
                services = request.app.state.services
                await hold.wait()
                return {"tills": len(await services.tills.list())}

            app.add_api_route("/_test/hold", held, methods=["GET"])
    group = Replicas(
        replicas=[Replica(app, f"replica-{n}") for n, app in enumerate(apps)],
        clients=[],
        sim=httpx.AsyncClient(transport=httpx.ASGITransport(app=sim_app), base_url=SIM_URL),
        simulator=simulator,
    )
    group.clients = [
        httpx.AsyncClient(transport=r.transport, base_url=SERVICE_URL) for r in group.replicas
    ]
    simulator.webhooks.set_transport(RoundRobin(group.replicas))
    unclosed_resources()  # whatever earlier tests left behind is not this test's finding
    async with sim_app.router.lifespan_context(sim_app):
        try:
            for replica in group.replicas:
                await replica.start()
            yield group
        finally:
            for client in [*group.clients, group.sim]:
                await client.aclose()
            for replica in group.replicas:
                await replica.stop()
    await simulator.aclose()


async def test_a_restart_lets_requests_inside_finish_first_and_refuses_new_ones(
    pg_url: str,
) -> None:
    hold = asyncio.Event()
    async with replicas(pg_url, 1, hold=hold) as group:
        replica, client = group.replicas[0], group.clients[0]
        inside = asyncio.create_task(client.get("/_test/hold"))
        await eventually(lambda: replica.inflight, "the held request to be inside the replica")

        restart = asyncio.create_task(replica.restart())
        await eventually(lambda: not replica.running, "the replica to stop accepting")
        # Still draining, not accepting: the lifespan (and with it the database engine) is
        # not shut down yet, as the held request is still inside.
        assert (restart.done(), replica.running, replica.inflight) == (False, False, 1)
        # A stopping process no longer accepts connections.
        with pytest.raises(httpx.ConnectError):
            await client.get("/healthz")

        hold.set()
        answer = await inside
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"tills": 0}
        await asyncio.wait_for(restart, 30)
        assert replica.running
        assert (await client.get("/api/v1/tills", headers=ADMIN)).status_code == 200
    assert unclosed_resources() == []


async def test_webhooks_delivered_during_restarts_leave_no_connection_open(pg_url: str) -> None:
    async with replicas(pg_url, 2) as group:
        client = group.clients[0]
        assert (await client.post(f"/api/v1/webhooks/{MSN}/ensure", headers=ADMIN)).is_success
        tills = []
        for n in range(3):
            response = await client.post(
                "/api/v1/tills",
                json={"tillId": f"rs-{n}", "storeId": "store-1", "locationDescription": f"rs {n}"},
                headers=ADMIN,
            )
            assert response.status_code == 201, response.text
            tills.append(response.json())
        scans = 0

        made = [0]  # scans so far

        async def customers_scanning(until: asyncio.Event) -> int:
            """Check-ins, one after the other, each a webhook to one of the replicas."""
            count = 0
            while not until.is_set():
                qr = tills[count % len(tills)]["merchantQrId"]
                scan = await group.sim.post(f"/_sim/qr/{qr}/scan", json={})
                assert scan.status_code == 200, scan.text
                count += 1
                made[0] += 1
                await asyncio.sleep(0.01)
            return count

        for round_ in range(6):
            done = asyncio.Event()
            traffic = asyncio.create_task(customers_scanning(done))
            before = made[0]
            await eventually(lambda: made[0] > before, "scans before the restart")  # noqa: B023
            await group.replicas[round_ % 2].restart()  # while webhooks keep coming
            restarted = made[0]
            await eventually(lambda: made[0] > restarted, "scans after the restart")  # noqa: B023
            done.set()
            scans += await traffic
        assert await group.simulator.webhooks.drain(within=30)
        deliveries = [d for d in group.simulator.webhooks.log if d.event == "user.checked-in.v1"]
        assert len(deliveries) == scans
        assert {d.status for d in deliveries} == {"delivered"}
        answers = [a.status_code for d in deliveries for a in d.attempts]
        assert all(code is not None and code < 500 for code in answers), answers
        # A restarting replica refused the connection; the load balancer sent it to the other.
        assert all(len(d.attempts) == 1 for d in deliveries), [d.attempts for d in deliveries]
        assert not any(replica.inflight for replica in group.replicas)
    assert unclosed_resources() == []
