"""Duplicate delivery: every signed webhook delivered 3 times at once, across 2 replicas.

Vipps retries anything it did not see acknowledged, and a retry may land on another replica while
the first delivery is still being handled. The inbox's unique key must turn 3N deliveries into
exactly N effects — N stored events, N check-ins, and for payment events one capture per payment.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.reliability.conftest import MSN, Cluster
from tests.reliability.support import assert_ledger_clean, scaled

pytestmark = [pytest.mark.soak, pytest.mark.timeout(scaled(300, 1800))]

CHECKINS = scaled(100, 1000, override="CHECKINS")
PAYMENTS = scaled(4, 20)
COPIES = 3


async def deliver_three_times(
    cluster: Cluster, secret: str, bodies: list[bytes], *, parallel: int = 24
) -> Counter[str]:
    """Each body 3× at once — replica 0, replica 1, replica 0 — each copy its own signature.

    Returns each copy's final answer. A copy whose connection broke (an idle keep-alive
    connection closed by the server just as it was reused — more likely on a loaded machine) is
    sent again, as Vipps re-sends a failed delivery; such re-sends are counted under
    ``"transport-retries"`` and printed, not mixed into the answers.
    """
    gate = asyncio.Semaphore(parallel)
    clients = [cluster.client(0), cluster.client(1)]
    outcomes: Counter[str] = Counter()
    retries: Counter[str] = Counter()

    async def one(body: bytes, replica: int) -> None:
        async with gate:
            for attempt in range(3):
                try:
                    response = await clients[replica].post(
                        f"/webhooks/vipps/{MSN}", content=body, headers=cluster.signed(secret, body)
                    )
                    break
                except httpx.TransportError:
                    if attempt == 2:
                        raise
                    retries["transport-retries"] += 1
        outcomes[f"{response.status_code}:{response.json().get('status')}"] += 1

    async def copies(body: bytes) -> None:
        await asyncio.gather(*(one(body, replica) for replica in (0, 1, 0)))

    try:
        await asyncio.gather(*(copies(body) for body in bodies))
    finally:
        for client in clients:
            await client.aclose()
    print(  # noqa: T201 (the figures docs/RELIABILITY.md reports; visible with -s)
        f"duplicate delivery: {dict(outcomes)}, re-sent after a broken connection: {dict(retries)}"
    )
    return outcomes


def check_in_body(merchant_qr_id: str) -> bytes:
    token = base64.b64encode(secrets.token_bytes(33)).decode()
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    payload = {
        "customerToken": token,
        "merchantQrId": merchant_qr_id,
        "msn": MSN,
        "initiatedAt": now,
    }
    return json.dumps(payload).encode()


async def wait_for_count(cluster: Cluster, sql: str, expected: int, timeout: float = 60) -> int:
    """Poll ``sql`` until it counts ``expected``; fails, with the last count, on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    count = int(await cluster.scalar(sql))
    while count != expected:
        if loop.time() > deadline:
            raise AssertionError(f"{sql} counted {count}, not {expected}, after {timeout}s")
        await asyncio.sleep(0.2)
        count = int(await cluster.scalar(sql))
    return count


async def test_each_checkin_delivered_three_times_across_two_replicas_takes_effect_once(
    make_cluster: Any,
) -> None:
    cluster: Cluster = await make_cluster(replicas=2)
    secret = await cluster.ensure_webhook()
    till = await cluster.register_till("dup-till")
    bodies = [check_in_body(till["merchantQrId"]) for _ in range(CHECKINS)]
    for body in bodies:
        cluster.known_secrets.add(json.loads(body)["customerToken"])

    outcomes = await deliver_three_times(cluster, secret, bodies)

    assert outcomes == {"200:accepted": CHECKINS, "200:duplicate": 2 * CHECKINS}, outcomes
    processed = await wait_for_count(
        cluster, "SELECT count(*) FROM webhook_inbox WHERE status = 'PROCESSED'", CHECKINS
    )
    assert processed == CHECKINS
    assert await cluster.scalar("SELECT count(*) FROM webhook_inbox") == CHECKINS
    assert await cluster.scalar("SELECT count(*) FROM checkins") == CHECKINS
    changes = await cluster.scalar("SELECT count(*) FROM checkout_changes WHERE kind LIKE 'scan.%'")
    assert changes == CHECKINS


async def test_each_authorized_webhook_delivered_three_times_captures_once(
    make_cluster: Any,
) -> None:
    cluster: Cluster = await make_cluster(replicas=2)
    secret = await cluster.ensure_webhook()
    tills = [await cluster.register_till(f"dup-pay-{i}") for i in range(PAYMENTS)]
    checkouts = []
    for till in tills:
        checkout = await cluster.checkout(till, 4990)
        await cluster.scan(till)
        checkouts.append(await cluster.wait_for(till, checkout["id"], lambda c: c["paymentSent"]))
    async with cluster.sim as sim:
        # Our own deliveries stand in for Vipps's; the simulator holds its copies back.
        assert (await sim.post("/_sim/webhooks/pause")).status_code == 200
        bodies = []
        for checkout in checkouts:
            reference = checkout["reference"]
            assert (await sim.post(f"/_sim/payments/{reference}/approve", json={})).is_success
            payment = (await sim.get(f"/_sim/payments/{reference}")).json()
            authorized = [e for e in payment["events"] if e["name"] == "AUTHORIZED"]
            bodies.append(json.dumps({"msn": MSN, **authorized[0]}).encode())

    outcomes = await deliver_three_times(cluster, secret, bodies)

    assert outcomes == {"200:accepted": PAYMENTS, "200:duplicate": 2 * PAYMENTS}, outcomes
    for till, checkout in zip(tills, checkouts, strict=True):
        done = await cluster.wait_final(till, checkout["id"])
        assert done["state"] == "CAPTURED", done
        assert done["capturedAmount"] == 4990
    report = assert_ledger_clean(await cluster.ledger())
    assert sorted(report.effective_captures.values()) == [1] * PAYMENTS
