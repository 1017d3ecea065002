"""A command decided while this process runs the outbox is claimed in the deciding transaction
and handed straight to the outbox (no claim round trip, no wait for a loop) — only when nothing
of the same checkout is still in line before it. And the intake's one-statement inbox insert
stores exactly what the ORM insert stores, on both databases."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from sqlalchemy import select

from app.domain.statuses import InboxStatus
from app.models import AuditEntry, InboxEvent, OutboxCommand
from app.persistence.counters import StatementCounter
from app.persistence.postgres import PostgresStore
from app.persistence.store import NewInboxEvent
from app.service import Services
from app.workers.outbox import OutboxWorker
from tests.api.support import payment_sent
from tests.support.stack import Stack, in_process_stack
from tests.support.waiting import eventually


def held_hand_offs(stack: Stack) -> tuple[list[OutboxCommand], OutboxWorker]:
    """Keep hand-offs instead of sending them, so a test can look at them in between."""
    services: Services = stack.app.state.services
    outbox: OutboxWorker = stack.app.state.workers[0]
    held: list[OutboxCommand] = []

    def hold(commands: Sequence[OutboxCommand]) -> None:
        held.extend(commands)

    services.ctx.dispatch_soon = hold
    return held, outbox


async def commands_of(stack: Stack, checkout_id: str) -> list[OutboxCommand]:
    services: Services = stack.app.state.services
    async with services.ctx.sessions() as session:
        rows = await session.scalars(
            select(OutboxCommand)
            .where(OutboxCommand.checkout_id == checkout_id)
            .order_by(OutboxCommand.id)
        )
        return list(rows)


async def test_the_create_payment_is_claimed_when_decided_and_sent_by_the_hand_off(
    database_url: str,
) -> None:
    async with in_process_stack(database_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till()
        checkout = await stack.checkout(till, 4200)
        held, outbox = held_hand_offs(stack)
        await stack.scan(till)
        await eventually(lambda: bool(held), "a hand-off")
        assert [c.kind for c in held] == ["CREATE_PAYMENT"]
        [row] = await commands_of(stack, checkout["id"])
        # Claimed as the claim loop would have: in flight, first attempt, leased.
        assert row.status == "IN_FLIGHT"
        assert row.attempts == 1
        assert row.lease_until is not None
        assert row.lease_until > datetime.now(UTC) + timedelta(seconds=20)
        # A claim loop passing now does not take a leased command.
        assert await outbox.run_once() == 0
        assert (await commands_of(stack, checkout["id"]))[0].status == "IN_FLIGHT"
        ledger = (await stack.sim.get("/_sim/ledger?operation=createPayment")).json()
        assert ledger == []
        outbox.dispatch_soon(held)
        sent = await payment_sent(stack, till, checkout["id"])
        assert sent["state"] == "PAYMENT_REQUESTED"
        [row] = await commands_of(stack, checkout["id"])
        assert (row.status, row.attempts) == ("DONE", 1)


async def test_a_command_behind_an_unfinished_one_waits_its_turn(database_url: str) -> None:
    async with in_process_stack(database_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till()
        checkout = await stack.checkout(till, 10000)
        await stack.scan(till)
        await payment_sent(stack, till, checkout["id"])
        await stack.approve(checkout["reference"])
        await stack.wait_state(till, checkout["id"], "CAPTURED")
        held, outbox = held_hand_offs(stack)

        async def refund(amount: int) -> httpx.Response:
            return await stack.service.post(
                f"/api/v1/checkouts/{checkout['id']}/refund",
                json={"amount": amount},
                headers=stack.till_headers(till),
            )

        async def rows() -> list[tuple[str, str]]:
            return [(r.kind, r.status) for r in await commands_of(stack, checkout["id"])]

        # The till's refund call waits a little for the outcome; run both in the background.
        first = asyncio.create_task(refund(3000))
        await eventually(lambda: bool(held), "a hand-off")
        second = asyncio.create_task(refund(2000))

        async def refund_waits_in_line() -> bool:
            return ("REFUND", "PENDING") in await rows()

        await eventually(refund_waits_in_line, "the second refund to wait in line")
        # Only the first refund was handed off; the second waits behind it, for the claim loop
        # once the first is done.
        assert [(c.kind, c.payload["amount"]) for c in held] == [("REFUND", 3000)]
        assert await rows() == [
            ("CREATE_PAYMENT", "DONE"),
            ("CAPTURE", "DONE"),
            ("REFUND", "IN_FLIGHT"),
            ("REFUND", "PENDING"),
        ]
        outbox.dispatch_soon(held)
        await asyncio.gather(first, second)
        done = await stack.wait_for(
            till, checkout["id"], lambda c: c["refundedAmount"] == 5000, timeout=15
        )
        assert done["state"] == "PARTIALLY_REFUNDED"
        assert len(held) == 1
        payment = (await stack.sim.get(f"/_sim/payments/{checkout['reference']}")).json()
        assert payment["aggregate"]["refundedAmount"]["value"] == 5000


async def test_without_an_outbox_in_this_process_commands_wait_for_a_claim(
    database_url: str,
) -> None:
    async with in_process_stack(database_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till()
        checkout = await stack.checkout(till, 4200)
        services: Services = stack.app.state.services
        # As in the operator CLI: no hand-off. The command is written PENDING (not leased, which
        # would strand it until the lease ran out) and the claim loop sends it.
        services.ctx.dispatch_soon = None
        await stack.scan(till)
        sent = await payment_sent(stack, till, checkout["id"])
        assert sent["state"] == "PAYMENT_REQUESTED"
        [row] = await commands_of(stack, checkout["id"])
        assert (row.status, row.attempts) == ("DONE", 1)


def _delivery(n: int, **overrides: Any) -> NewInboxEvent:
    values: dict[str, Any] = {
        "dedup_key": f"delivery-{n}".ljust(64, "x"),
        "msn": "123456",
        "event_type": "user.checked-in.v1",
        "reference": None,
        "merchant_qr_id": "no-such-qr",
        "body": "{}",
        "body_encrypted": False,
        "event_time": None,
        "disposition": "decide",
        "outcome": None,
        "last_error": None,
    }
    return NewInboxEvent(**(values | overrides))


async def test_the_intakes_group_insert_files_each_delivery_and_drops_duplicates(
    database_url: str,
) -> None:
    """One statement stores a group of deliveries: each is matched to its till or checkout,
    filed PENDING (a decision is needed), PROCESSED (a signal), UNMATCHED or FAILED, and a
    delivery seen before — in an earlier group or earlier in the same one — is not stored."""
    async with in_process_stack(database_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till()
        checkout = await stack.checkout(till, 4200)
        services: Services = stack.app.state.services
        store = services.ctx.store
        now = datetime.now(UTC).replace(microsecond=0)
        lease = now + timedelta(seconds=5)
        scan = _delivery(1, merchant_qr_id=till["merchantQrId"], event_time=now)
        created = _delivery(
            2,
            event_type="epayments.payment.created.v1",
            reference=checkout["reference"],
            merchant_qr_id=None,
            disposition="settle",
            outcome="signal",
        )
        stranger = _delivery(3)
        garbled = _delivery(4, merchant_qr_id=None, disposition="failed", last_error="garbled")
        stored = await store.store_inbox([scan, created, stranger, garbled, scan], now, lease)
        by_key = {row.dedup_key: row for row in stored}
        assert len(stored) == 4, "the second copy of the scan in the same group is dropped"
        assert by_key[scan.dedup_key].status is InboxStatus.PENDING
        assert by_key[created.dedup_key].status is InboxStatus.PROCESSED
        assert by_key[created.dedup_key].checkout_id == checkout["id"]
        assert by_key[stranger.dedup_key].status is InboxStatus.UNMATCHED
        assert by_key[garbled.dedup_key].status is InboxStatus.FAILED
        assert await store.store_inbox([scan, created], now, lease) == []
        async with services.ctx.sessions() as session:
            rows = {
                row.dedup_key: row
                for row in await session.scalars(select(InboxEvent).order_by(InboxEvent.id))
            }
        assert rows[scan.dedup_key].next_attempt_at == lease  # leased to the receiving replica
        assert rows[scan.dedup_key].event_time == now
        assert rows[created.dedup_key].outcome == "signal"
        assert rows[stranger.dedup_key].outcome == "unmatched"
        assert rows[garbled.dedup_key].last_error == "garbled"


async def test_a_connection_the_database_dropped_is_replaced_not_reused(pg_url: str) -> None:
    """The hot paths' raw connections bypass SQLAlchemy's pool: a connection the database
    dropped (a restart) fails at most the one statement that finds it dead, and the next
    statement gets a fresh connection instead of the corpse."""
    store = await PostgresStore.open(pg_url, size=1, counter=StatementCounter())
    now = datetime.now(UTC)
    lease = now + timedelta(seconds=5)
    try:
        assert await store.store_inbox([_delivery(1)], now, lease)
        async with store._pool.acquire() as connection:
            backend = await connection.fetchval("SELECT pg_backend_pid()")
        admin = await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            # With a timeout the call waits until the backend has exited (or fails), so the next
            # statement meets a dead connection, not one that is still being shut down.
            assert await admin.fetchval("SELECT pg_terminate_backend($1, 10000)", backend)
        finally:
            await admin.close()
        # The statement that finds the connection dead may fail (asyncpg reports it as a
        # connection error, or as a confused protocol state); it must not poison the pool.
        with contextlib.suppress(
            OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError
        ):
            await store.store_inbox([_delivery(2)], now, lease)
        assert await store.store_inbox([_delivery(3)], now, lease)
        async with store._pool.acquire() as connection:
            assert await connection.fetchval("SELECT pg_backend_pid()") != backend
    finally:
        await store.close()


async def test_audit_entries_name_the_request_that_caused_them_not_the_first_one(
    database_url: str,
) -> None:
    """Processing lanes are long-lived tasks, and hand-offs are tasks too: each event must be
    processed in the context of the request that stored it, and a hand-off's recording belongs
    to no request (as when a claim loop dispatches), or the hash-chained audit log would name
    the wrong endpoint for good."""
    async with in_process_stack(database_url) as stack:
        await stack.add_keys()  # the second sales unit's own keys
        tills = {}
        currencies = {"123456": "NOK", "654321": "DKK"}  # the simulator's two sales units
        for msn, name in (("123456", "till-a"), ("654321", "till-b")):
            await stack.ensure_webhook(msn)
            tills[msn] = await stack.register_till(name, msn=msn)
        checkouts = {}
        for msn, till in tills.items():  # the first scan starts the lanes
            checkouts[msn] = await stack.checkout(till, 1500, currency=currencies[msn])
            await stack.scan(till)
            sent = await payment_sent(stack, till, checkouts[msn]["id"])
            await stack.approve(sent["reference"])
            await stack.wait_state(till, checkouts[msn]["id"], "CAPTURED")
        services: Services = stack.app.state.services
        async with services.ctx.sessions() as session:
            entries = list(
                await session.scalars(
                    select(AuditEntry).where(AuditEntry.checkout_id == checkouts["654321"]["id"])
                )
            )
        by_action = {(e.actor, e.action): e.detail for e in entries}
        scanned = by_action[("vipps:user.checked-in", "customer_scanned")]
        assert scanned.get("endpoint") == "POST /webhooks/vipps/654321"
        authorized = by_action[("vipps:AUTHORIZED", "vipps_authorized")]
        assert authorized.get("endpoint") == "POST /webhooks/vipps/654321"
        recorded = by_action[("outbox:capture", "capture_succeeded")]
        assert "endpoint" not in recorded
