"""Crash recovery: SIGKILL the service at named points of the atomic phases, restart it, and check
that every checkout reaches its right final state within 30 s and Vipps saw no duplicate effect.

The service dies through the test-only hook :mod:`app.service.crashpoints` (``VIPPS_POS_CRASH_AT``),
i.e. exactly at the point named, not "somewhere around it". Recovery relies on:

* the outbox lease — a command claimed by the dead process is reclaimed when its lease ends (the
  suite uses a 5 s lease, so the figure below is lease + restart + the remaining sale);
* the same ``Idempotency-Key`` on the retry, so Vipps replays instead of acting twice;
* the inbox — a webhook stored but never answered is processed after the restart, and Vipps's
  retry of it is acknowledged as a duplicate;
* the POS retrying its capture with the same ``Idempotency-Key``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.service.crashpoints import CRASH_AT_VARIABLE
from tests.reliability.conftest import Cluster
from tests.reliability.support import assert_ledger_clean, scaled

pytestmark = [pytest.mark.soak, pytest.mark.timeout(scaled(400, 3600))]

ROUNDS = scaled(1, 20, override="CRASH_ROUNDS")
RECOVERY_LIMIT_SECONDS = 30.0
LEASE_SECONDS = "5"


@dataclass(frozen=True)
class CrashCase:
    point: str
    capture_mode: str
    expected_state: str = "CAPTURED"


CASES = [
    # after the claim committed, before the create-payment call
    CrashCase("outbox.before_call:CREATE_PAYMENT", "AUTO"),
    # after Vipps created the payment, before we recorded it
    CrashCase("outbox.after_call:CREATE_PAYMENT", "AUTO"),
    # a webhook stored in the inbox, neither answered nor processed
    CrashCase("webhook.after_inbox_commit", "AUTO"),
    # mid-capture (automatic): Vipps captured, we did not record it
    CrashCase("outbox.after_call:CAPTURE", "AUTO"),
    # mid-capture (the till's): the capture is committed, the till never got its answer
    CrashCase("capture.after_commit", "MANUAL"),
]


async def wait_for_exit(cluster: Cluster, timeout: float = 30.0) -> None:
    process = cluster.replicas[0].process
    assert process is not None
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        assert time.monotonic() < deadline, "the crash point was never reached"
        await asyncio.sleep(0.05)
    assert process.returncode == -9, process.returncode


async def restart(cluster: Cluster, crash_at: str | None) -> None:
    service = cluster.replicas[0]
    service.kill()  # every checkout is final here; a kill is what this suite is about anyway
    if crash_at is None:
        service.extra_env.pop(CRASH_AT_VARIABLE, None)
    else:
        service.extra_env[CRASH_AT_VARIABLE] = crash_at
    await asyncio.to_thread(service.start)


async def approve_when_sent(cluster: Cluster, till: dict[str, Any], checkout_id: str) -> str:
    sent = await cluster.wait_for(till, checkout_id, lambda c: c["paymentSent"], timeout=40)
    async with cluster.sim as sim:
        response = await sim.post(f"/_sim/payments/{sent['reference']}/approve", json={})
    assert response.status_code == 200, response.text
    return str(sent["reference"])


async def crash_round(cluster: Cluster, till: dict[str, Any], case: CrashCase) -> float:
    """One sale that kills the service at ``case.point``; returns seconds from restart to final."""
    if cluster.replicas[0].extra_env.get(CRASH_AT_VARIABLE) != case.point:
        await restart(cluster, case.point)
    checkout = await cluster.checkout(till, 7300, captureMode=case.capture_mode)
    await cluster.scan(till)
    capture_key = f"capture-{checkout['id']}"
    if case.point.endswith(":CAPTURE"):
        await approve_when_sent(cluster, till, checkout["id"])
    elif case.point == "capture.after_commit":
        await approve_when_sent(cluster, till, checkout["id"])
        await cluster.wait_for(till, checkout["id"], lambda c: c["state"] == "AUTHORIZED")
        async with cluster.client() as client:
            with pytest.raises(httpx.TransportError):
                await client.post(
                    f"/api/v1/checkouts/{checkout['id']}/capture",
                    json={},
                    headers={**cluster.pos(till), "Idempotency-Key": capture_key},
                )
    await wait_for_exit(cluster)

    started = time.monotonic()
    await restart(cluster, None)
    if case.point == "capture.after_commit":
        # The till did not get an answer: it asks again with the same key.
        async with cluster.client() as client:
            response = await client.post(
                f"/api/v1/checkouts/{checkout['id']}/capture",
                json={},
                headers={**cluster.pos(till), "Idempotency-Key": capture_key},
            )
        assert response.status_code == 200, response.text
    elif not case.point.endswith(":CAPTURE"):
        await approve_when_sent(cluster, till, checkout["id"])
    done = await cluster.wait_final(till, checkout["id"], timeout=RECOVERY_LIMIT_SECONDS)
    elapsed = time.monotonic() - started
    assert done["state"] == case.expected_state, done
    assert done["capturedAmount"] == 7300, done
    return elapsed


async def test_kill_9_at_each_named_point_recovers_without_duplicates(make_cluster: Any) -> None:
    """All points in one run (one database, one till): each round is a fresh sale."""
    env = {
        "VIPPS_POS_WORKERS__OUTBOX_LEASE_SECONDS": LEASE_SECONDS,
        CRASH_AT_VARIABLE: CASES[0].point,
    }
    cluster: Cluster = await make_cluster(replicas=1, extra_env=env)
    await cluster.ensure_webhook()
    till = await cluster.register_till("crash-till")
    figures = {}
    for case in CASES:
        recoveries = [await crash_round(cluster, till, case) for _ in range(ROUNDS)]
        figures[case.point] = (max(recoveries), sum(recoveries) / len(recoveries))

    report = assert_ledger_clean(await cluster.ledger())
    sales = ROUNDS * len(CASES)
    assert len(report.effective_creates) == sales
    assert sorted(report.effective_captures.values()) == [1] * sales
    for point, (slowest, mean) in figures.items():
        print(  # noqa: T201 (the figures docs/RELIABILITY.md reports; visible with -s)
            f"crash {point}: {ROUNDS} kills, slowest recovery {slowest:.1f}s, mean {mean:.1f}s"
        )
