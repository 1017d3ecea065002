"""Edges of the checkout orchestrator and the operator actions around it.

Each test reaches its edge the way production does — a flow with a return URL, a decision
losing the race for its till, a webhook processed twice (the receiving replica and the inbox
worker), a till asking about another till's checkout, a lost LISTEN connection, Vipps down
during a resync, a QR left behind at Vipps, an audit log edited by hand — and checks what
matters: state, totals, rows written, problem codes, and what was (or was not) sent to Vipps.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from sqlalchemy import delete, func, select, text, update

from app.domain.state_machine import Event, EventKind
from app.models import AuditEntry, CheckIn, Checkout, InboxEvent, OutboxCommand, Till
from app.notifications import checkout_key
from app.persistence.records import InboxRecord, RevisionConflict
from app.service.checkouts import MAX_ATTEMPTS
from tests.api.support import assert_problem, drain, effective_calls, ledger
from tests.service.support import (
    audit_trail,
    authorized,
    calls,
    clear_faults,
    driven_stack,
    drop_listen_connections,
    fault,
    outbox,
    outbox_rows,
    payment_at_vipps,
    requested,
    resync,
    run_outbox,
    services,
    till_post,
    totals,
)
from tests.support.stack import Stack
from tests.support.waiting import eventually


async def count(stack: Stack, model: Any, *where: Any) -> int:
    async with services(stack).ctx.sessions() as session:
        value = await session.scalar(select(func.count()).select_from(model).where(*where))
    return int(value or 0)


async def fetch_one(stack: Stack, sql: str) -> tuple[Any, ...]:
    async with services(stack).ctx.sessions() as session:
        row = (await session.execute(text(sql))).one()
    return tuple(row)


async def inbox_rows(stack: Stack, **match: Any) -> list[InboxEvent]:
    async with services(stack).ctx.sessions() as session:
        rows = await session.scalars(
            select(InboxEvent)
            .where(*(getattr(InboxEvent, k) == v for k, v in match.items()))
            .order_by(InboxEvent.id)
        )
        return list(rows)


async def process_again(stack: Stack, row: InboxEvent) -> str:
    """Run a stored webhook through processing once more, as a second worker would."""
    intake = services(stack).intake
    record = InboxRecord(
        row.id, row.msn, row.event_type, row.reference, row.body, row.body_encrypted,
        row.status, row.attempts, row.received_at,
    )  # fmt: skip
    return await intake.process_stored(intake.stored_of(record))


# ---- the payment request ---------------------------------------------------------------------


async def test_a_web_redirect_flow_sends_the_return_url_naming_the_reference(
    database_url: str,
) -> None:
    return_url = "https://shop.test/vipps/return"
    async with driven_stack(
        database_url, vipps={"user_flow": "WEB_REDIRECT", "return_url": return_url}
    ) as stack:
        till = await stack.register_till()

        checkout = await requested(stack, till)

        async with services(stack).ctx.sessions() as session:
            body = await session.scalar(
                select(OutboxCommand.payload).where(
                    OutboxCommand.checkout_id == checkout["id"],
                    OutboxCommand.kind == "CREATE_PAYMENT",
                )
            )
        assert body is not None
        sent = body["body"]
        assert sent["userFlow"] == "WEB_REDIRECT"
        assert sent["returnUrl"] == f"{return_url}?reference={checkout['reference']}"
        assert (await effective_calls(stack, checkout["reference"]))["createPayment"] == 1
        report = (await stack.sim.get("/_sim/violations")).json()
        assert report["violations"] == [], report["violations"]


# ---- decisions that keep losing the race for their till --------------------------------------


def compete_on_loads(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, till_id: str, losses: int
) -> list[int]:
    """After each of the first ``losses`` loads of a checkout, another writer changes the till
    (a real write bumping its revision), so the save decided on that load must be refused."""
    store = services(stack).ctx.store
    original = store.load_checkout
    loads: list[int] = []

    async def load_then_lose(*args: Any, **kwargs: Any) -> Any:
        loaded = await original(*args, **kwargs)
        loads.append(1)
        if len(loads) <= losses:
            async with services(stack).ctx.sessions() as session, session.begin():
                await session.execute(
                    update(Till).where(Till.id == till_id).values(revision=Till.revision + 1)
                )
        return loaded

    monkeypatch.setattr(store, "load_checkout", load_then_lose)
    return loads


async def test_a_decision_that_lost_every_race_but_the_last_is_saved_on_the_last_attempt(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await stack.checkout(till)
        loads = compete_on_loads(stack, monkeypatch, till["tillId"], MAX_ATTEMPTS - 1)

        cancelled = await till_post(stack, till, checkout["id"], "cancel")

        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"] == "CANCELLED"
        assert len(loads) == MAX_ATTEMPTS
        # Saved once: one audit entry for the cancel, and nothing was sent to Vipps.
        actions = [action for _, action in await audit_trail(stack, checkout["id"])]
        assert actions.count("cancel_requested") == 1
        assert await outbox_rows(stack, checkout["id"]) == []


async def test_a_decision_that_loses_every_race_gives_up_after_the_last_attempt_writing_nothing(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await stack.checkout(till)
        trail = await audit_trail(stack, checkout["id"])
        loads = compete_on_loads(stack, monkeypatch, till["tillId"], 10 * MAX_ATTEMPTS)

        with pytest.raises(RevisionConflict):
            await services(stack).checkouts.cancel(
                till["tillId"], checkout["id"], idempotency_key=None, actor="till:test"
            )

        assert len(loads) == MAX_ATTEMPTS
        monkeypatch.undo()
        after = await stack.get(till, checkout["id"])
        assert (after["state"], after["version"]) == ("AWAITING_SCAN", checkout["version"])
        assert await audit_trail(stack, checkout["id"]) == trail


# ---- rows that vanished or were already handled ----------------------------------------------


async def test_an_event_for_a_checkout_deleted_by_hand_is_dropped_without_writing(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await stack.checkout(till)
        # Removed by hand (the service never deletes a checkout).
        async with services(stack).ctx.sessions() as session, session.begin():
            await session.execute(delete(Checkout).where(Checkout.id == checkout["id"]))
        audit_before = await count(stack, AuditEntry)
        changes_before = (await fetch_one(stack, "SELECT count(*) FROM checkout_changes"))[0]

        decision = await services(stack).checkouts.apply(
            checkout["id"], Event(EventKind.SCAN_TIMED_OUT), actor="reconciler"
        )

        assert decision is None
        assert await count(stack, AuditEntry) == audit_before
        assert (await fetch_one(stack, "SELECT count(*) FROM checkout_changes"))[0] == (
            changes_before
        )
        assert await count(stack, Checkout) == 0


async def test_a_command_whose_checkout_reference_was_cleared_fails_without_calling_vipps(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await authorized(stack, till)  # its capture is queued
        # Unlinked by hand (the service always writes a command with its checkout).
        async with services(stack).ctx.sessions() as session, session.begin():
            await session.execute(
                update(OutboxCommand)
                .where(OutboxCommand.checkout_id == checkout["id"], OutboxCommand.kind == "CAPTURE")
                .values(checkout_id=None)
            )
        calls_before = len(await ledger(stack))

        await run_outbox(stack)

        async with services(stack).ctx.sessions() as session:
            orphan = await session.scalar(
                select(OutboxCommand).where(OutboxCommand.checkout_id.is_(None))
            )
        assert orphan is not None
        assert (orphan.kind, orphan.status, orphan.last_error) == (
            "CAPTURE",
            "FAILED",
            "checkout no longer exists",
        )
        assert len(await ledger(stack)) == calls_before
        assert (await payment_at_vipps(stack, checkout["reference"]))["captured"] == 0
        assert await outbox(stack).run_once() == 0  # not retried


async def test_a_check_in_processed_a_second_time_is_skipped_and_changes_nothing(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await requested(stack, till)
        [checkin] = await inbox_rows(stack, event_type="user.checked-in.v1")
        assert (checkin.status, checkin.outcome) == ("PROCESSED", "attached")
        checkins_before = await count(stack, CheckIn)
        trail = await audit_trail(stack, checkout["id"])
        rows = await outbox_rows(stack, checkout["id"])

        assert await process_again(stack, checkin) == "skipped"

        assert await count(stack, CheckIn) == checkins_before
        again = await stack.get(till, checkout["id"])
        assert (again["state"], again["version"]) == ("PAYMENT_REQUESTED", checkout["version"])
        assert await audit_trail(stack, checkout["id"]) == trail
        assert await outbox_rows(stack, checkout["id"]) == rows
        assert (await effective_calls(stack, checkout["reference"]))["createPayment"] == 1


async def test_a_payment_webhook_processed_a_second_time_does_not_capture_twice(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await authorized(stack, till)
        [approval] = [
            row
            for row in await inbox_rows(stack, reference=checkout["reference"])
            if row.outcome == "applied"
        ]
        trail = await audit_trail(stack, checkout["id"])

        assert await process_again(stack, approval) == "skipped"
        await run_outbox(stack)

        done = await stack.get(till, checkout["id"])
        assert (done["state"], done["capturedAmount"]) == ("CAPTURED", 10000)
        assert [kind for kind, _ in calls(await outbox_rows(stack, checkout["id"]))] == [
            "CREATE_PAYMENT",
            "CAPTURE",
        ]
        assert (await audit_trail(stack, checkout["id"]))[: len(trail)] == trail
        assert (await effective_calls(stack, checkout["reference"]))["capturePayment"] == 1
        assert await payment_at_vipps(stack, checkout["reference"]) == totals(done)


# ---- what a till may see and wait for ----------------------------------------------------------


async def test_a_till_cannot_long_poll_another_tills_checkout(database_url: str) -> None:
    async with driven_stack(database_url) as stack:
        owner = await stack.register_till("till-1")
        other = await stack.register_till("till-2")
        checkout = await stack.checkout(owner)  # known to this process as just saved

        response = await stack.service.get(
            f"/api/v1/checkouts/{checkout['id']}",
            params={"wait": 5, "version": checkout["version"]},
            headers=stack.till_headers(other),
        )

        assert_problem(response, 404, "checkout_not_found")


async def test_a_long_poll_outlives_a_lost_change_listener_and_answers_with_the_next_change(
    pg_url: str,
) -> None:
    async with driven_stack(pg_url) as stack:
        hub = services(stack).ctx.hub
        till = await stack.register_till()
        checkout = await stack.checkout(till)
        assert hub.latest(checkout["id"]) is not None
        poll = asyncio.ensure_future(
            stack.get(till, checkout["id"], wait=15, version=checkout["version"])
        )
        try:
            await eventually(
                lambda: checkout_key(checkout["id"]) in hub._events, "the long-poll to wait"
            )
            # The LISTEN connection drops: whatever this process knew is forgotten.
            assert await drop_listen_connections(stack) == 1, "no LISTEN connection found"
            await eventually(lambda: hub.latest(checkout["id"]) is None, "the hub to forget")
            assert not poll.done()  # nothing changed: the wait goes on

            cancelled = await till_post(stack, till, checkout["id"], "cancel")
            assert cancelled.status_code == 200, cancelled.text

            answer = await asyncio.wait_for(poll, 10)
        finally:
            if not poll.done():
                poll.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poll
        assert answer["state"] == "CANCELLED"
        assert answer["version"] == cancelled.json()["version"] > checkout["version"]


async def test_the_till_feed_ticks_while_idle_and_stops_at_once_when_stopped(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await stack.checkout(till)
        stop = asyncio.Event()
        feed = services(stack).checkouts.till_feed(
            till["tillId"], after=None, keepalive=0.05, stop=stop
        )
        try:
            snapshot = await anext(feed)
            assert (snapshot.kind, snapshot.checkout_id) == ("snapshot", checkout["id"])
            assert await anext(feed) is None  # nothing new: a keep-alive tick

            stop.set()
            with pytest.raises(StopAsyncIteration):
                await anext(feed)
        finally:
            await feed.aclose()


async def test_a_stopped_till_feed_yields_nothing_more_even_with_changes_waiting(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await stack.checkout(till)
        cancelled = await till_post(stack, till, checkout["id"], "cancel")
        assert cancelled.status_code == 200, cancelled.text
        stop = asyncio.Event()
        feed = services(stack).checkouts.till_feed(till["tillId"], after=0, stop=stop)
        try:
            first = await anext(feed)
            assert (first.kind, first.checkout_id) == ("checkout.created", checkout["id"])

            stop.set()  # the credential was revoked: the cancel must not be streamed
            with pytest.raises(StopAsyncIteration):
                await anext(feed)
        finally:
            await feed.aclose()
        # The change withheld was there to be sent.
        kinds = [item.kind for item in await services(stack).ctx.store.changes_after(
            till["tillId"], first.id, 100
        )]  # fmt: skip
        assert kinds == ["checkout.updated"]


# ---- cancels the state does not allow ----------------------------------------------------------


async def test_cancelling_while_the_capture_is_queued_is_refused_and_nothing_is_released(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await authorized(stack, till)  # AUTO: its capture is queued, not yet sent

        refused = await till_post(stack, till, checkout["id"], "cancel")

        assert_problem(refused, 409, "capture_in_progress")
        assert [kind for kind, _ in calls(await outbox_rows(stack, checkout["id"]))] == [
            "CREATE_PAYMENT",
            "CAPTURE",
        ]
        await run_outbox(stack)
        done = await stack.get(till, checkout["id"])
        assert (done["state"], done["capturedAmount"], done["cancelledAmount"]) == (
            "CAPTURED",
            10000,
            0,
        )
        assert "cancelPayment" not in await effective_calls(stack, checkout["reference"])


async def test_cancelling_a_declined_sale_is_refused_as_final(database_url: str) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await requested(stack, till)
        await stack.decline(checkout["reference"])
        await drain(stack)
        await stack.wait_state(till, checkout["id"], "REJECTED")

        refused = await till_post(stack, till, checkout["id"], "cancel")

        assert_problem(refused, 409, "checkout_final")
        assert (await stack.get(till, checkout["id"]))["state"] == "REJECTED"
        assert calls(await outbox_rows(stack, checkout["id"])) == [("CREATE_PAYMENT", "DONE")]
        assert "cancelPayment" not in await effective_calls(stack, checkout["reference"])


# ---- operator actions while Vipps is down ----------------------------------------------------


async def test_a_resync_while_vipps_is_down_is_a_503_problem_and_changes_nothing(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await requested(stack, till)
        await fault(stack, kind="error", status=503, operation="getPayment")

        response = await resync(stack, checkout["id"])

        assert_problem(response, 503, "vipps_unavailable")
        assert "Retry-After" not in response.headers  # an outage, not a rate limit
        after = await stack.get(till, checkout["id"])
        assert (after["state"], after["version"]) == ("PAYMENT_REQUESTED", checkout["version"])
        await clear_faults(stack)
        assert (await resync(stack, checkout["id"])).status_code == 200


# ---- drift between our tills and Vipps's QRs ---------------------------------------------------


async def vipps_qr_ids(stack: Stack) -> set[str]:
    qrs = await services(stack).ctx.vipps.list_callback_qrs("123456")
    return {qr.merchant_qr_id for qr in qrs}


async def drift(stack: Stack) -> list[tuple[str, str | None]]:
    response = await stack.service.get("/api/v1/drift", headers=stack.admin)
    assert response.status_code == 200, response.text
    return [(d["kind"], d["tillId"]) for d in response.json()["drift"]]


async def test_a_deactivated_tills_qr_left_at_vipps_is_found_and_deleted(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        await fault(stack, kind="error", status=503, operation="DeleteMerchantCallbackQr")
        deactivated = await stack.service.post(
            f"/api/v1/tills/{till['tillId']}/deactivate", headers=stack.admin
        )
        assert deactivated.status_code == 200, deactivated.text
        await clear_faults(stack)
        assert till["merchantQrId"] in await vipps_qr_ids(stack)  # a scan would wait for nothing

        assert await drift(stack) == [("inactive", till["tillId"])]
        repaired = await stack.service.post("/api/v1/drift/repair", json={}, headers=stack.admin)

        assert repaired.status_code == 200, repaired.text
        assert repaired.json()["clean"] is True
        assert till["merchantQrId"] not in await vipps_qr_ids(stack)
        assert await drift(stack) == []


async def test_a_till_whose_qr_content_was_never_fetched_gets_it_on_repair(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        await fault(stack, kind="error", status=503, operation="GetMerchantCallbackById")
        till = await stack.register_till()
        await clear_faults(stack)
        async with services(stack).ctx.sessions() as session:
            stored = await session.get(Till, till["tillId"])
            assert stored is not None
            assert (stored.qr_status, stored.qr_content) == ("FAILED", None)

        assert await drift(stack) == [("no_content", till["tillId"])]
        repaired = await stack.service.post("/api/v1/drift/repair", json={}, headers=stack.admin)

        assert repaired.json()["clean"] is True, repaired.text
        async with services(stack).ctx.sessions() as session:
            stored = await session.get(Till, till["tillId"])
            assert stored is not None
            assert stored.qr_status == "SYNCED"
            assert stored.qr_content
        assert await drift(stack) == []


# ---- the audit trail -------------------------------------------------------------------------


async def test_an_audit_entry_deleted_by_hand_breaks_the_chain_where_it_was(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await stack.checkout(till)
        assert (await till_post(stack, till, checkout["id"], "cancel")).status_code == 200
        async with services(stack).ctx.sessions() as session, session.begin():
            chain = list(
                await session.scalars(
                    select(AuditEntry)
                    .where(AuditEntry.chain == till["tillId"])
                    .order_by(AuditEntry.seq)
                )
            )
            assert [e.seq for e in chain] == list(range(1, len(chain) + 1))
            assert len(chain) >= 3
            gone, follower = chain[1], chain[2]
            await session.execute(delete(AuditEntry).where(AuditEntry.id == gone.id))

        verified = (await stack.service.get("/api/v1/audit/verify", headers=stack.admin)).json()

        assert verified["intact"] is False
        breaks = {(b["chain"], b["seq"], b["problem"]) for b in verified["breaks"]}
        assert breaks == {
            (till["tillId"], follower.seq, "sequence gap"),
            (till["tillId"], follower.seq, "previous hash mismatch"),
        }
