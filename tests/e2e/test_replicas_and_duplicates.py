"""Scale-out and at-least-once delivery over real HTTP on Postgres.

* Two service processes share one database. Vipps delivers webhooks to replica A only; the tills
  talk to replica B. B's long-polls wake when A commits (LISTEN/NOTIFY); both run workers, and
  Vipps still sees exactly one create and one capture per payment.
* Every webhook arrives several times at once. Nothing changes that the first did not.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.simulator.webhooks import signing_target
from app.vipps.signature import format_ms_date, sign_webhook
from tests.e2e.helpers import LiveTill, effective_calls
from tests.support.live import ServiceProcess

pytestmark = pytest.mark.e2e

ONE_SALE = {"createPayment": 1, "userApprove": 1, "capturePayment": 1}


async def test_two_replicas_on_one_database(
    service: ServiceProcess,
    replica_b: ServiceProcess,
    admin: httpx.AsyncClient,
    sim: httpx.AsyncClient,
) -> None:
    assert (await admin.post("/api/v1/webhooks/123456/ensure")).status_code == 200
    registered = (await sim.get("/_sim/webhooks")).json()["registrations"]
    assert [r["url"] for r in registered] == [f"{service.url}/webhooks/vipps/123456"]
    tills = [await LiveTill.register(admin, sim, f"t{i}", replica_b.url) for i in range(3)]

    # A scan with no sale on the till: only A's inbox worker writes anything (no Vipps call, no
    # worker on B involved). B's event stream hears of it through NOTIFY — without it, B would
    # only look again at its 15-second keep-alive.
    async with tills[0].pos.stream("GET", f"/api/v1/tills/{tills[0].id}/events") as stream:
        lines = stream.aiter_lines()
        kinds: list[str] = []

        async def next_kind() -> str:
            async for line in lines:
                if line.startswith("event:"):
                    return line.removeprefix("event:").strip()
            raise AssertionError("stream ended")

        kinds.append(await asyncio.wait_for(next_kind(), 10))
        scanned_at = time.monotonic()
        await tills[0].scan()
        kinds.append(await asyncio.wait_for(next_kind(), 5))
        assert time.monotonic() - scanned_at < 5
    assert kinds == ["snapshot", "scan.waiting"]

    async def sale(till: LiveTill, amount: int) -> tuple[dict[str, Any], float]:
        checkout = await till.checkout(amount)
        if checkout["state"] == "PAYMENT_REQUESTED":  # the first till's waiting scan was used
            sent = await till.wait_for(checkout["id"], lambda c: c["paymentSent"])
            await till.approve(sent["reference"])
            return await till.wait_state(checkout["id"], "CAPTURED"), 0.0
        # Long-poll on B for the scan, which only A hears of (the reconciler never polls
        # for scans): B wakes because A's commit NOTIFYs it.
        waiting = asyncio.create_task(
            till.get(checkout["id"], wait=20, version=checkout["version"])
        )
        await asyncio.sleep(0.3)
        scanned_at = time.monotonic()
        await till.scan()
        woke = await waiting
        latency = time.monotonic() - scanned_at
        assert woke["state"] == "PAYMENT_REQUESTED", woke
        sent = await till.wait_for(checkout["id"], lambda c: c["paymentSent"])
        await till.approve(sent["reference"])
        return await till.wait_state(checkout["id"], "CAPTURED"), latency

    try:
        results = await asyncio.gather(*(sale(t, 1000 * (i + 1)) for i, t in enumerate(tills)))
    finally:
        for till in tills:
            await till.aclose()
    for i, (done, latency) in enumerate(results):
        assert done["capturedAmount"] == 1000 * (i + 1)
        assert latency < 5, f"B's long-poll woke {latency:.1f}s after the scan"
        assert await effective_calls(sim, done["reference"]) == ONE_SALE
    for replica in (service, replica_b):
        assert replica.process is not None
        assert replica.process.poll() is None  # both still up: no crash from the contention


async def relay_concurrently(
    sim: httpx.AsyncClient,
    service_url: str,
    stop: asyncio.Event,
    answers: dict[str, list[str]],
    *,
    skip: set[str],
    copies: int = 4,
) -> None:
    """Deliver every webhook the simulator emits ``copies`` more times, all at once, signed
    exactly as Vipps signs (the simulator delivers it too, at about the same moment)."""
    secrets = {
        r["url"]: r["secret"] for r in (await sim.get("/_sim/webhooks")).json()["registrations"]
    }
    seen = set(skip)
    async with httpx.AsyncClient(timeout=30) as client:

        async def deliver(delivery: dict[str, Any]) -> str:
            body = orjson.dumps(delivery["payload"])
            path_and_query, host = signing_target(delivery["url"])
            headers = sign_webhook(
                secrets[delivery["url"]],
                path_and_query=path_and_query,
                host=host,
                body=body,
                ms_date=format_ms_date(datetime.now(UTC)),
            )
            headers["Content-Type"] = "application/json"
            response = await client.post(
                f"{service_url}{path_and_query}", content=body, headers=headers
            )
            assert response.status_code == 200, response.text
            status: str = response.json()["status"]
            return status

        while True:
            # Checked before the sweep: once stopped, one more sweep relays what came last.
            stopping = stop.is_set()
            for delivery in (await sim.get("/_sim/deliveries")).json():
                if delivery["id"] in seen or delivery["duplicateOf"]:
                    continue
                seen.add(delivery["id"])
                statuses = await asyncio.gather(*(deliver(delivery) for _ in range(copies)))
                answers[delivery["event"]] = [*answers.get(delivery["event"], []), *statuses]
            if stopping:
                return
            await asyncio.sleep(0.01)


async def history(db: AsyncEngine, checkout_id: str) -> dict[str, Any]:
    """What a checkout's processing left behind: its changes, inbox rows, audit, Vipps calls."""
    async with db.connect() as connection:
        changes = (
            await connection.execute(
                text(
                    "SELECT kind, state, data FROM checkout_changes "
                    "WHERE checkout_id = :id ORDER BY id"
                ),
                {"id": checkout_id},
            )
        ).all()
        inbox = (
            await connection.execute(
                text(
                    # Not the outcome: whether the webhook or the reconciler's poll told us of
                    # the approval first is a race of its own, with the same result.
                    "SELECT event_type, status FROM webhook_inbox "
                    "WHERE checkout_id = :id ORDER BY event_type"
                ),
                {"id": checkout_id},
            )
        ).all()
        outbox = (
            await connection.execute(
                text("SELECT kind, status FROM outbox WHERE checkout_id = :id ORDER BY id"),
                {"id": checkout_id},
            )
        ).all()
        checkout = (
            await connection.execute(
                text(
                    "SELECT state, authorized_value, captured_value, cancelled_value, "
                    "refunded_value, version FROM checkouts WHERE id = :id"
                ),
                {"id": checkout_id},
            )
        ).one()
    return {
        "changes": [(c.kind, c.state, c.data.get("event")) for c in changes],
        "inbox": [tuple(row) for row in inbox],
        "outbox": [tuple(row) for row in outbox],
        "checkout": tuple(checkout),
    }


async def test_every_webhook_delivered_again_concurrently_changes_nothing(
    service: ServiceProcess,
    admin: httpx.AsyncClient,
    sim: httpx.AsyncClient,
    db: AsyncEngine,
) -> None:
    assert (await admin.post("/api/v1/webhooks/123456/ensure")).status_code == 200
    quiet = await LiveTill.register(admin, sim, "quiet", service.url)
    noisy = await LiveTill.register(admin, sim, "noisy", service.url)

    async def sale(till: LiveTill) -> dict[str, Any]:
        checkout = await till.checkout(4500)
        await till.scan()
        sent = await till.wait_for(checkout["id"], lambda c: c["paymentSent"])
        await till.approve(sent["reference"])
        return await till.wait_state(checkout["id"], "CAPTURED")

    try:
        baseline = await sale(quiet)
        assert (await sim.post("/_sim/deliveries/drain", json={})).json()["drained"]
        # From now on the simulator delivers everything twice, and the relay adds four
        # concurrent copies of each delivery on top.
        rule = await sim.post("/_sim/faults", json={"kind": "webhook_duplicate"})
        assert rule.status_code == 201, rule.text
        stop = asyncio.Event()
        answers: dict[str, list[str]] = {}
        delivered_before = {d["id"] for d in (await sim.get("/_sim/deliveries")).json()}
        relay = asyncio.create_task(
            relay_concurrently(sim, service.url, stop, answers, skip=delivered_before)
        )
        try:
            noisy_done = await sale(noisy)
            assert (await sim.post("/_sim/deliveries/drain", json={"timeout": 10})).json()[
                "drained"
            ]
        finally:
            stop.set()
            await relay
    finally:
        await quiet.aclose()
        await noisy.aclose()

    new = [d for d in (await sim.get("/_sim/deliveries")).json() if d["id"] not in delivered_before]
    assert {d["event"] for d in new} == {
        "user.checked-in.v1",
        "epayments.payment.authorized.v1",
        "epayments.payment.captured.v1",
    }
    assert all(d["status"] == "delivered" for d in new)
    assert any(d["duplicateOf"] for d in new)
    # Of all copies of one event, at most one was taken in (the simulator's own may have won).
    for event, statuses in answers.items():
        if event in {d["event"] for d in new}:
            assert statuses.count("accepted") <= 1, (event, statuses)
            assert set(statuses) <= {"accepted", "duplicate"}

    assert await effective_calls(sim, noisy_done["reference"]) == ONE_SALE
    quiet_history = await history(db, baseline["id"])
    noisy_history = await history(db, noisy_done["id"])
    assert noisy_history == quiet_history
