"""The statement budget: how many database round trips a sale costs the service, on Postgres.

A count, not a timing — stable on a noisy machine. Every statement the service sends is counted
(the hot paths' raw statements and the ORM's, ``app.state.statements``), for the whole sale as a
till and Vipps drive it: the till's requests (create, long-polls, refund), every webhook Vipps
sends (check-in, created, authorized, captured, refunded) stored and processed, and every Vipps
call the outbox makes recorded. A later change that brings round trips back fails here; raise a
budget only with a reason in benchmarks/README.md.

The sale runs against the simulator in-process, with the workers' idle polling slowed down so
that only the sale's own work is counted (the reconciler's passes are counted by nothing here).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from app.persistence.counters import StatementCounter
from tests.support.stack import Stack, in_process_stack

# Budgets per sale, with the warm caches of a till that sells all day (its key, the webhook
# secret, the Vipps access token).
SALE_STATEMENTS = 16
SALE_TRANSACTIONS = 10
REFUND_STATEMENTS = 6
REFUND_TRANSACTIONS = 4


@dataclass
class Cost:
    statements: int
    transactions: int


@pytest.fixture
async def stack(pg_url: str) -> AsyncIterator[Stack]:
    quiet = {
        "outbox_poll_interval_seconds": 30.0,
        "reconcile_interval_seconds": 3600.0,
        "reconcile_first_poll_seconds": 3600.0,
    }
    async with in_process_stack(pg_url, workers=quiet) as running:
        await running.ensure_webhook()
        yield running


async def _long_poll(
    stack: Stack, till: dict[str, Any], checkout: dict[str, Any], done: Callable[[Any], bool]
) -> dict[str, Any]:
    """Wait as a till does: long-polls that return when the version moves on."""
    for _ in range(50):
        if done(checkout):
            return checkout
        response = await stack.service.get(
            f"/api/v1/checkouts/{checkout['id']}",
            params={"wait": 5, "version": checkout["version"]},
            headers=stack.till_headers(till),
        )
        assert response.status_code == 200, response.text
        checkout = response.json()
    raise AssertionError(f"never reached; last seen {checkout}")


async def _quiet(stack: Stack, pg_url: str, reference: str, last_event: str) -> None:
    """Until Vipps has delivered everything about ``reference`` up to ``last_event`` and the
    service has processed it, and no Vipps call for it is still in flight. Read on a connection
    of the test's own: it is not counted."""
    assert await stack.simulator.webhooks.drain(within=10.0)
    connection = await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        for _ in range(200):
            busy = await connection.fetchval(
                """
                SELECT (SELECT count(*) FROM webhook_inbox
                        WHERE reference = $1 AND event_type = $2) = 0
                    OR (SELECT count(*) FROM webhook_inbox
                        WHERE status IN ('PENDING', 'FAILED')) > 0
                    OR (SELECT count(*) FROM outbox WHERE status IN ('PENDING', 'IN_FLIGHT')) > 0
                """,
                reference,
                last_event,
            )
            if not busy:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the service did not settle")
    finally:
        await connection.close()


def _since(counter: StatementCounter, before: tuple[int, int]) -> Cost:
    statements, transactions = counter.snapshot()
    return Cost(statements - before[0], transactions - before[1])


async def _basket_first_sale(stack: Stack, pg_url: str, till: dict[str, Any]) -> dict[str, Any]:
    checkout = await stack.checkout(till, 12900)
    await stack.scan(till)
    checkout = await _long_poll(stack, till, checkout, lambda c: c["paymentSent"])
    await stack.approve(checkout["reference"])
    checkout = await _long_poll(stack, till, checkout, lambda c: c["state"] == "CAPTURED")
    await _quiet(stack, pg_url, checkout["reference"], "epayments.payment.captured.v1")
    return checkout


async def test_a_basket_first_sale_with_automatic_capture_stays_within_budget(
    stack: Stack, pg_url: str
) -> None:
    till = await stack.register_till()
    counter: StatementCounter = stack.app.state.statements
    await _basket_first_sale(stack, pg_url, till)  # warms the caches a till's day keeps warm
    before = counter.snapshot()
    sold = await _basket_first_sale(stack, pg_url, till)
    cost = _since(counter, before)
    assert sold["capturedAmount"] == 12900
    assert cost.statements <= SALE_STATEMENTS, cost
    assert cost.transactions <= SALE_TRANSACTIONS, cost


async def test_a_scan_first_sale_stays_within_budget(stack: Stack, pg_url: str) -> None:
    till = await stack.register_till()
    counter: StatementCounter = stack.app.state.statements
    await _basket_first_sale(stack, pg_url, till)
    before = counter.snapshot()
    await stack.scan(till)
    assert await stack.simulator.webhooks.drain(within=10.0)
    connection = await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        for _ in range(200):  # the check-in is processed after it was acknowledged
            if await connection.fetchval("SELECT count(*) FROM checkins WHERE status = 'WAITING'"):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the check-in never waited for a checkout")
    finally:
        await connection.close()
    checkout = await stack.checkout(till, 5000)
    checkout = await _long_poll(stack, till, checkout, lambda c: c["paymentSent"])
    await stack.approve(checkout["reference"])
    checkout = await _long_poll(stack, till, checkout, lambda c: c["state"] == "CAPTURED")
    await _quiet(stack, pg_url, checkout["reference"], "epayments.payment.captured.v1")
    cost = _since(counter, before)
    assert checkout["capturedAmount"] == 5000
    assert cost.statements <= SALE_STATEMENTS, cost
    assert cost.transactions <= SALE_TRANSACTIONS, cost


async def test_a_refund_stays_within_budget(stack: Stack, pg_url: str) -> None:
    till = await stack.register_till()
    counter: StatementCounter = stack.app.state.statements
    sold = await _basket_first_sale(stack, pg_url, till)
    before = counter.snapshot()
    response = await stack.service.post(
        f"/api/v1/checkouts/{sold['id']}/refund",
        json={"amount": 4900},
        headers={**stack.till_headers(till), "Idempotency-Key": "refund-1"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["refundedAmount"] == 4900
    await _quiet(stack, pg_url, sold["reference"], "epayments.payment.refunded.v1")
    cost = _since(counter, before)
    assert cost.statements <= REFUND_STATEMENTS, cost
    assert cost.transactions <= REFUND_TRANSACTIONS, cost
