"""A stack whose workers the test drives, and reads of the money books.

In :func:`driven_stack` no worker loop runs: webhooks are still processed as they arrive (by
the receiving app, as always), but the outbox performs commands only when the test calls
:func:`run_outbox`, and Vipps is asked about a checkout only when the test resyncs it (the
operators' ``POST /checkouts/{id}/resync``) or runs the reconciler. So each step of a repair or
a refusal happens when the test says, through the same seams as in production.

The reads at the end (:func:`outbox_rows`, :func:`audit_trail`) are small SQL queries kept here
on purpose, so they are easy to adapt when the tables change.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import httpx
from sqlalchemy import select, text

from app.domain.state_machine import CommandKind
from app.models import AuditEntry, Checkout, OutboxCommand
from app.persistence.records import CommandRecord
from app.service import Services
from app.simulator import SimulatorConfig
from app.workers.outbox import OutboxWorker
from app.workers.reconciler import Reconciler
from tests.api.support import drain, payment_sent
from tests.support.stack import Stack, in_process_stack

T = TypeVar("T")
MSN = "123456"


@contextlib.asynccontextmanager
async def driven_stack(
    database_url: str, *, sim_config: SimulatorConfig | None = None, **overrides: Any
) -> AsyncIterator[Stack]:
    """The service and the simulator in-process, without worker loops (see the module)."""
    workers = {"enabled": False, **overrides.pop("workers", {})}
    async with in_process_stack(
        database_url, sim_config=sim_config, workers=workers, **overrides
    ) as stack:
        await stack.ensure_webhook()
        yield stack


def services(stack: Stack) -> Services:
    found: Services = stack.app.state.services
    return found


def outbox(stack: Stack) -> OutboxWorker:
    worker: OutboxWorker = stack.app.state.workers[0]
    return worker


def reconciler(stack: Stack) -> Reconciler:
    worker: Reconciler = stack.app.state.workers[2]
    return worker


async def run_outbox(stack: Stack) -> int:
    """Perform every command that is due now (and those they decide in turn)."""
    total = 0
    while handled := await outbox(stack).run_once():
        total += handled
    return total


async def while_outbox_runs(stack: Stack, request: Awaitable[T], timeout: float = 20.0) -> T:
    """A till request waits for the outcome of the calls it decides: run the outbox meanwhile."""
    task = asyncio.ensure_future(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done():
        if loop.time() > deadline:
            task.cancel()
            raise AssertionError("the till request never got its outcome")
        await run_outbox(stack)
        await asyncio.sleep(0.02)
    return task.result()


# ---- a sale, step by step ------------------------------------------------------------------


async def requested(
    stack: Stack, till: dict[str, Any], amount: int = 10000, **body: Any
) -> dict[str, Any]:
    """Ring up and scan; the outbox sends the payment request: the push is in the app."""
    checkout = await stack.checkout(till, amount, **body)
    await stack.scan(till)
    await stack.wait_state(till, checkout["id"], "PAYMENT_REQUESTED")
    await run_outbox(stack)
    return await payment_sent(stack, till, checkout["id"])


async def authorized(
    stack: Stack, till: dict[str, Any], amount: int = 10000, **body: Any
) -> dict[str, Any]:
    """A sale the customer approved (webhook delivered); in AUTO mode its capture is queued."""
    checkout = await requested(stack, till, amount, **body)
    await stack.approve(checkout["reference"])
    await drain(stack)
    return await stack.wait_for(till, checkout["id"], lambda c: c["authorizedAmount"] > 0)


async def resync(stack: Stack, checkout_id: str) -> httpx.Response:
    return await stack.service.post(f"/api/v1/checkouts/{checkout_id}/resync", headers=stack.admin)


async def till_post(
    stack: Stack, till: dict[str, Any], checkout_id: str, action: str, **body: Any
) -> httpx.Response:
    return await stack.service.post(
        f"/api/v1/checkouts/{checkout_id}/{action}", json=body, headers=stack.till_headers(till)
    )


# ---- Vipps, as another system on the same sales unit (the merchant portal, say) -------------


async def drop_listen_connections(stack: Stack) -> int:
    """The database drops every LISTEN connection on the stack's database (all replicas');
    returns how many it dropped."""
    async with services(stack).ctx.sessions() as session:
        dropped = (
            await session.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query ILIKE 'LISTEN%' "
                    "AND pid <> pg_backend_pid()"
                )
            )
        ).all()
    return len(dropped)


# Vipps's totals of a payment nothing has happened to.
NOTHING = {"authorized": 0, "captured": 0, "refunded": 0, "cancelled": 0}


async def pause_webhooks(stack: Stack) -> None:
    """The simulator holds its webhooks back: what we learn, we learn by asking."""
    assert (await stack.sim.post("/_sim/webhooks/pause")).is_success


async def at_vipps(
    stack: Stack, method: str, path: str, json: Any = None, key: str | None = None
) -> httpx.Response:
    """Call the simulator's ePayment API directly, with the merchant's own credentials."""
    token = await stack.sim.post(
        "/accesstoken/get",
        headers={
            "client_id": "sim-client-id",
            "client_secret": "sim-client-secret",
            "Ocp-Apim-Subscription-Key": "sim-subscription-key",
        },
    )
    assert token.status_code == 200, token.text
    headers = {
        "Authorization": f"Bearer {token.json()['access_token']}",
        "Ocp-Apim-Subscription-Key": "sim-subscription-key",
        "Merchant-Serial-Number": MSN,
    }
    if key is not None:
        headers["Idempotency-Key"] = key
    return await stack.sim.request(method, path, headers=headers, json=json)


async def payment_at_vipps(stack: Stack, reference: str) -> dict[str, int]:
    """Vipps's totals for the payment (its own books)."""
    payment = (await stack.sim.get(f"/_sim/payments/{reference}")).json()
    aggregate = payment["aggregate"]
    return {
        "authorized": aggregate["authorizedAmount"]["value"],
        "captured": aggregate["capturedAmount"]["value"],
        "refunded": aggregate["refundedAmount"]["value"],
        "cancelled": aggregate["cancelledAmount"]["value"],
    }


def totals(checkout: dict[str, Any]) -> dict[str, int]:
    """Our totals as the till sees them; comparable with :func:`payment_at_vipps`."""
    return {
        "authorized": checkout["authorizedAmount"],
        "captured": checkout["capturedAmount"],
        "refunded": checkout["refundedAmount"],
        "cancelled": checkout["cancelledAmount"],
    }


async def fault(stack: Stack, **rule: Any) -> str:
    response = await stack.sim.post("/_sim/faults", json=rule)
    assert response.status_code in (200, 201), response.text
    rule_id: str = response.json()["id"]
    return rule_id


async def clear_faults(stack: Stack) -> None:
    assert (await stack.sim.delete("/_sim/faults")).is_success


async def command_as_claimed(stack: Stack, checkout_id: str, kind: str) -> CommandRecord:
    """The checkout's ``kind`` command as a worker holds it after a claim (as of now), to hand
    to :meth:`OutboxWorker.dispatch` the way a replica with an expired lease would."""
    async with services(stack).ctx.sessions() as session:
        row = await session.scalar(
            select(OutboxCommand).where(
                OutboxCommand.checkout_id == checkout_id, OutboxCommand.kind == kind
            )
        )
        assert row is not None, f"no {kind} command for {checkout_id}"
        checkout = await session.get(Checkout, checkout_id)
        assert checkout is not None
        return CommandRecord(
            id=row.id,
            checkout_id=row.checkout_id,
            till_id=row.till_id,
            kind=CommandKind(row.kind),
            msn=row.msn,
            reference=row.reference,
            idempotency_key=row.idempotency_key,
            payload=row.payload or {},
            attempts=row.attempts + 1,
            outcome_unknown=row.outcome_unknown,
            customer_token_enc=checkout.customer_token_enc,
            customer_token_expires_at=checkout.customer_token_expires_at,
            mutating_calls=checkout.mutating_calls,
            scanned_at=checkout.scanned_at,
            store_id=checkout.store_id,
        )


# ---- the books --------------------------------------------------------------------------------


async def outbox_rows(stack: Stack, checkout_id: str) -> list[dict[str, Any]]:
    """The checkout's Vipps calls in order: kind, status, amount, attempts, last_error, ..."""
    async with services(stack).ctx.sessions() as session:
        rows = await session.scalars(
            select(OutboxCommand)
            .where(OutboxCommand.checkout_id == checkout_id)
            .order_by(OutboxCommand.id)
        )
        return [
            {
                "kind": row.kind,
                "status": row.status,
                "amount": (row.payload or {}).get("amount"),
                "attempts": row.attempts,
                "last_error": row.last_error,
                "outcome_unknown": row.outcome_unknown,
                "result": row.result,
                "next_attempt_at": row.next_attempt_at,
            }
            for row in rows
        ]


def calls(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(row["kind"], row["status"]) for row in rows]


async def audit_trail(stack: Stack, checkout_id: str) -> list[tuple[str, str]]:
    """(actor, action) of the checkout's audit entries, oldest first."""
    async with services(stack).ctx.sessions() as session:
        rows = await session.scalars(
            select(AuditEntry).where(AuditEntry.checkout_id == checkout_id).order_by(AuditEntry.id)
        )
        return [(row.actor, row.action) for row in rows]
