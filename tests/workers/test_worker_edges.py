"""Edges of the three workers: their loops ending when asked, a hand-off cut short at shutdown,
webhooks only an inbox worker can apply, the rate-limit memory across a minute, a create whose
customer token is gone, and a reconciler pass that outlives one broken poll.

Each test checks what matters afterwards: what Vipps did (its ledger and totals), the rows we
wrote (outbox, inbox, check-ins) and the checkout the till sees.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

import app.workers.outbox as outbox_module
from app.models import CheckIn, InboxEvent, OutboxCommand
from app.persistence.store import NewInboxEvent
from app.service.context import utcnow
from app.service.intake import dedup_key, read_delivery
from app.workers.inbox import InboxWorker
from app.workers.outbox import OutboxWorker
from tests.api.support import drain, effective_calls, iso, ledger, payment_sent, wait_inbox
from tests.service.support import (
    MSN,
    NOTHING,
    authorized,
    calls,
    clear_faults,
    command_as_claimed,
    driven_stack,
    fault,
    outbox,
    outbox_rows,
    pause_webhooks,
    payment_at_vipps,
    reconciler,
    requested,
    run_outbox,
    services,
    till_post,
    totals,
    while_outbox_runs,
)
from tests.support.stack import Stack
from tests.support.waiting import eventually

STOPS_WITHIN = 5.0  # seconds a loop may take to notice ``stop``: far above its poll interval


def inbox(stack: Stack) -> InboxWorker:
    worker: InboxWorker = stack.app.state.workers[1]
    return worker


async def strand_payment_webhook(stack: Stack, reference: str, name: str, amount: int) -> int:
    """A payment webhook a replica stored and acknowledged, then died before applying: filed
    exactly as the intake files it, its processing lease already over. Only an inbox worker
    applies it now."""
    now = utcnow()
    payload: dict[str, Any] = {
        "msn": MSN,
        "reference": reference,
        "pspReference": f"psp-{reference}",
        "name": name,
        "amount": {"currency": "NOK", "value": amount},
        "timestamp": iso(now),
        "success": True,
    }
    body = json.dumps(payload).encode()
    delivery = read_delivery(MSN, payload, body)
    assert delivery.disposition == "decide"
    event = NewInboxEvent(
        dedup_key=dedup_key(MSN, delivery.event_type, payload, body),
        msn=MSN,
        event_type=delivery.event_type,
        reference=delivery.reference,
        merchant_qr_id=None,
        body=body.decode(),
        body_encrypted=False,
        event_time=delivery.event_time,
        disposition=delivery.disposition,
        outcome=None,
        last_error=None,
    )
    [stored] = await services(stack).ctx.store.store_inbox([event], now, now)
    return stored.id


async def inbox_statuses(stack: Stack, ids: list[int]) -> list[str]:
    async with services(stack).ctx.sessions() as session:
        rows = await session.scalars(
            select(InboxEvent).where(InboxEvent.id.in_(ids)).order_by(InboxEvent.id)
        )
        return [row.status for row in rows]


async def approved_without_webhooks(stack: Stack, till: dict[str, Any]) -> dict[str, Any]:
    """A sale the customer approved in the app; webhooks are held back, so we do not know yet."""
    checkout = await requested(stack, till)
    await pause_webhooks(stack)
    await stack.approve(checkout["reference"])
    return checkout


async def stops_by_itself(task: asyncio.Task[None]) -> None:
    """The loop returns on its own once ``stop`` is set: it is not cancelled and raises nothing."""
    done, _ = await asyncio.wait({task}, timeout=STOPS_WITHIN)
    if not done:
        task.cancel()
        raise AssertionError("the loop kept running after stop was set")
    assert not task.cancelled()
    assert task.result() is None


# ---- the loops end when asked ------------------------------------------------------------------


async def test_the_outbox_loop_sends_due_commands_and_returns_once_stopped(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await stack.checkout(till, 4200)
        await stack.scan(till)
        await stack.wait_state(till, checkout["id"], "PAYMENT_REQUESTED")
        # No loop runs yet: the create waits, PENDING.
        [row] = await outbox_rows(stack, checkout["id"])
        assert (row["kind"], row["status"]) == ("CREATE_PAYMENT", "PENDING")
        stop = asyncio.Event()

        task = asyncio.create_task(outbox(stack).run(stop))
        sent = await payment_sent(stack, till, checkout["id"])
        stop.set()

        await stops_by_itself(task)
        assert sent["state"] == "PAYMENT_REQUESTED"
        assert await effective_calls(stack, checkout["reference"]) == {"createPayment": 1}
        [row] = await outbox_rows(stack, checkout["id"])
        assert (row["status"], row["attempts"]) == ("DONE", 1)


async def test_the_inbox_loop_applies_a_stranded_webhook_and_returns_once_stopped(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await approved_without_webhooks(stack, till)
        stop = asyncio.Event()
        task = asyncio.create_task(inbox(stack).run(stop))

        stranded = await strand_payment_webhook(stack, checkout["reference"], "AUTHORIZED", 10000)
        seen = await stack.wait_for(till, checkout["id"], lambda c: c["authorizedAmount"] > 0)
        stop.set()

        await stops_by_itself(task)
        assert (seen["state"], seen["authorizedAmount"]) == ("AUTHORIZED", 10000)
        assert await inbox_statuses(stack, [stranded]) == ["PROCESSED"]


async def test_the_reconciler_loop_learns_an_approval_and_returns_once_stopped(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await approved_without_webhooks(stack, till)
        # Its first poll is due.
        services(stack).ctx.clock = lambda: utcnow() + timedelta(minutes=1)
        stop = asyncio.Event()

        task = asyncio.create_task(reconciler(stack).run(stop))
        seen = await stack.wait_for(till, checkout["id"], lambda c: c["authorizedAmount"] > 0)
        stop.set()

        # The loop waits on ``stop`` between passes (every 0.2 s here), so it ends at once.
        await stops_by_itself(task)
        assert (seen["state"], seen["authorizedAmount"]) == ("AUTHORIZED", 10000)


# ---- the inbox worker --------------------------------------------------------------------------


async def two_approved_unheard(stack: Stack) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Two tills, each with a sale its customer approved while webhooks were held back:
    ``[(till, checkout), (till, checkout)]``, both checkouts still PAYMENT_REQUESTED here."""
    sales = []
    for till_id in ("till-1", "till-2"):
        till = await stack.register_till(till_id)
        sales.append((till, await requested(stack, till)))
    await pause_webhooks(stack)
    for _, checkout in sales:
        await stack.approve(checkout["reference"])
    return sales


async def test_stranded_payment_webhooks_of_two_sales_are_applied_by_the_inbox_worker(
    database_url: str,
) -> None:
    """Events with a payment reference are processed in a lane per reference; two sales' events
    are both applied in one pass, and each sale is then captured exactly once."""
    async with driven_stack(database_url) as stack:
        (first_till, first), (second_till, second) = await two_approved_unheard(stack)
        stranded = [
            await strand_payment_webhook(stack, first["reference"], "AUTHORIZED", 10000),
            await strand_payment_webhook(stack, second["reference"], "AUTHORIZED", 10000),
        ]
        # Nothing has applied them: we still wait for the customers.
        for till, sale in ((first_till, first), (second_till, second)):
            assert (await stack.get(till, sale["id"]))["state"] == "PAYMENT_REQUESTED"

        assert await inbox(stack).run_once() == 2
        assert await inbox_statuses(stack, stranded) == ["PROCESSED", "PROCESSED"]
        assert await inbox(stack).run_once() == 0  # applied once, not claimed again

        await run_outbox(stack)  # the auto captures they decided
        for till, sale in ((first_till, first), (second_till, second)):
            done = await stack.get(till, sale["id"])
            assert (done["state"], done["capturedAmount"]) == ("CAPTURED", 10000)
            assert await payment_at_vipps(stack, sale["reference"]) == totals(done)
            assert (await effective_calls(stack, sale["reference"]))["capturePayment"] == 1


# ---- the outbox --------------------------------------------------------------------------------


async def test_a_hand_off_still_waiting_for_vipps_at_shutdown_is_cancelled_and_retried_later(
    database_url: str,
) -> None:
    """``aclose`` waits ``grace`` seconds for hand-offs, then cancels them. The cancelled command
    stays IN_FLIGHT under its lease (no claim takes it meanwhile); after the lease a claim sends
    it again with the same Idempotency-Key, and the payment is requested once."""
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        worker = outbox(stack)
        ctx = services(stack).ctx
        ctx.dispatch_soon = worker.dispatch_soon  # as while the outbox loops run
        hang = await fault(stack, kind="hang", operation="createPayment", hangSeconds=30, times=1)
        checkout = await stack.checkout(till, 4200)
        await stack.scan(till)

        async def vipps_holds_the_call() -> bool:
            rules = (await stack.sim.get("/_sim/faults")).json()["rules"]
            return any(r["id"] == hang and r["fired"] == 1 for r in rules)

        await eventually(vipps_holds_the_call, "the create to reach Vipps")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await worker.aclose(grace=0.2)

        assert loop.time() - started < STOPS_WITHIN  # did not wait for Vipps's answer
        assert ctx.dispatch_soon is None  # no more hand-offs: commands wait for a claim
        [row] = await outbox_rows(stack, checkout["id"])
        assert (row["status"], row["attempts"]) == ("IN_FLIGHT", 1)
        assert await worker.run_once() == 0  # its lease still holds
        assert await effective_calls(stack, checkout["reference"]) == {}
        assert (await stack.get(till, checkout["id"]))["paymentSent"] is False

        # After the lease, a claim sends it again.
        lease = timedelta(seconds=ctx.settings.workers.outbox_lease_seconds + 1)
        ctx.clock = lambda: utcnow() + lease
        await run_outbox(stack)

        sent = await payment_sent(stack, till, checkout["id"])
        assert sent["state"] == "PAYMENT_REQUESTED"
        creates = await ledger(stack, operation="createPayment")  # the only sale
        assert [(e["fault"], e["effect"]) for e in creates] == [("hang", False), (None, True)]
        async with ctx.sessions() as session:
            key = await session.scalar(
                select(OutboxCommand.idempotency_key).where(
                    OutboxCommand.checkout_id == checkout["id"]
                )
            )
        assert {e["idempotencyKey"] for e in creates} == {key}
        [row] = await outbox_rows(stack, checkout["id"])
        assert (row["status"], row["attempts"]) == ("DONE", 2)


class _ShiftedTime:
    """The outbox's view of wall-clock time, movable forward like the simulator's clock."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()


async def test_refunds_made_over_a_minute_ago_no_longer_hold_back_the_next_one(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox remembers its own calls per reference and operation; those older than Vipps's
    one-minute window are forgotten, so a sixth refund a minute after five goes out at once."""
    clock = _ShiftedTime()
    monkeypatch.setattr(outbox_module, "time", clock)
    async with driven_stack(database_url, checkout={"max_wait_seconds": 1}) as stack:
        till = await stack.register_till()
        checkout = await authorized(stack, till)
        await run_outbox(stack)  # the auto capture
        for _ in range(5):
            refunded = await while_outbox_runs(
                stack, till_post(stack, till, checkout["id"], "refund", amount=1000)
            )
            assert refunded.status_code == 200, refunded.text

        # A minute later, for Vipps and for us.
        assert (await stack.sim.post("/_sim/clock/advance", json={"seconds": 61})).is_success
        clock.offset += 61

        sixth = await while_outbox_runs(
            stack, till_post(stack, till, checkout["id"], "refund", amount=1000)
        )

        assert sixth.status_code == 200, sixth.text
        assert sixth.json()["refundedAmount"] == 6000
        [*_, last] = await outbox_rows(stack, checkout["id"])
        assert (last["kind"], last["status"], last["attempts"], last["last_error"]) == (
            "REFUND",
            "DONE",
            1,
            None,
        )
        refunds = await ledger(stack, reference=checkout["reference"], operation="refundPayment")
        assert [(e["status"], e["effect"]) for e in refunds] == [(200, True)] * 6
        assert await payment_at_vipps(stack, checkout["reference"]) == totals(sixth.json())


async def test_a_create_with_a_lost_answer_is_not_sent_again_once_the_customer_token_is_gone(
    database_url: str,
) -> None:
    """The first create took effect but its answer was lost; the customer then declined, which
    ends the sale and drops its customer token. The retry cannot ask Vipps (GET fails) and has
    no token to send again: it gives up without calling createPayment a second time."""
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await stack.checkout(till, 4200)
        await fault(stack, kind="drop_response", operation="createPayment", times=1)
        await stack.scan(till)
        await stack.wait_state(till, checkout["id"], "PAYMENT_REQUESTED")
        await run_outbox(stack)
        [row] = await outbox_rows(stack, checkout["id"])
        assert (row["status"], row["outcome_unknown"]) == ("PENDING", True)

        await stack.decline(checkout["reference"])
        await drain(stack)
        await stack.wait_state(till, checkout["id"], "REJECTED")
        await clear_faults(stack)
        await fault(stack, kind="error", status=503, operation="getPayment")

        async def given_up() -> bool:
            await run_outbox(stack)
            [row] = await outbox_rows(stack, checkout["id"])
            return bool(row["status"] == "FAILED")

        await eventually(given_up, "the create to be given up")

        [row] = await outbox_rows(stack, checkout["id"])
        assert row["attempts"] == 2
        assert row["result"] == {"event": "PAYMENT_CREATE_REFUSED"}
        creates = await ledger(stack, reference=checkout["reference"], operation="createPayment")
        assert [(e["effect"], e["responseDropped"]) for e in creates] == [(True, True)]
        done = await stack.get(till, checkout["id"])
        assert done["state"] == "REJECTED"
        # The sale keeps the reason it ended with; the given-up create explains nothing.
        assert done["failure"] is None
        assert totals(done) == NOTHING
        assert await payment_at_vipps(stack, checkout["reference"]) == NOTHING


# ---- the reconciler ----------------------------------------------------------------------------


async def test_one_poll_failing_unexpectedly_does_not_stop_the_others(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with driven_stack(database_url) as stack:
        (first_till, first), (second_till, second) = await two_approved_unheard(stack)
        vipps = services(stack).ctx.vipps
        real_get = vipps.get_payment
        broken = {first["reference"]}

        # An error of no Vipps kind (which the client never raises itself) in one poll only.
        async def get_payment(msn: str, reference: str) -> Any:
            if reference in broken:
                raise RuntimeError("unexpected failure in one poll")
            return await real_get(msn, reference)

        monkeypatch.setattr(vipps, "get_payment", get_payment)
        services(stack).ctx.clock = lambda: utcnow() + timedelta(minutes=1)

        with capture_logs() as logs:
            assert await reconciler(stack).run_once() == 1

        errors = [e for e in logs if e["event"] == "reconciler.poll_error"]
        assert [(e["checkout_id"], e["log_level"]) for e in errors] == [(first["id"], "error")]
        assert (await stack.get(first_till, first["id"]))["state"] == "PAYMENT_REQUESTED"
        learnt = await stack.get(second_till, second["id"])
        assert (learnt["state"], learnt["authorizedAmount"]) == ("AUTHORIZED", 10000)

        # The failed poll was not rescheduled away: the next pass asks again and learns it.
        broken.clear()
        services(stack).ctx.clock = lambda: utcnow() + timedelta(minutes=2)
        assert await reconciler(stack).run_once() == 1
        await run_outbox(stack)
        for till, sale in ((first_till, first), (second_till, second)):
            done = await stack.get(till, sale["id"])
            assert (done["state"], done["capturedAmount"]) == ("CAPTURED", 10000)
            assert await payment_at_vipps(stack, sale["reference"]) == totals(done)


async def test_a_scan_left_waiting_past_its_token_lifetime_is_expired_by_the_reconciler(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        await stack.scan(till)  # before the cashier rang anything up: the scan waits
        await drain(stack)
        await wait_inbox(stack, lambda rows: rows and rows[0]["outcome"] == "waiting")
        settings = services(stack).ctx.settings.checkout
        later = utcnow() + timedelta(seconds=settings.customer_token_lifetime_seconds + 1)
        services(stack).ctx.clock = lambda: later

        with capture_logs() as logs:
            assert await reconciler(stack).run_once() == 0  # no checkout changed

        async with services(stack).ctx.sessions() as session:
            statuses = list(await session.scalars(select(CheckIn.status)))
        assert statuses == ["EXPIRED"]
        assert [e["count"] for e in logs if e["event"] == "reconciler.checkins_expired"] == [1]
        # The next sale at the till waits for a scan of its own: no payment request is sent to
        # the customer whose token ran out.
        checkout = await stack.checkout(till, 5000)
        assert checkout["state"] == "AWAITING_SCAN"
        assert await ledger(stack, operation="createPayment") == []


async def test_an_outbox_without_a_customer_club_lets_the_sale_go_on_unidentified(
    database_url: str,
) -> None:
    """A worker built without the club (a replica where it is not configured) must not hold a
    sale in IDENTIFYING: the identification ends with its reason and the payment goes out."""
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        policy = await stack.service.put(
            "/api/v1/stores/store-1", json={"clubPolicy": "lookup"}, headers=stack.admin
        )
        assert policy.status_code == 200, policy.text
        checkout = await stack.checkout(till)
        await stack.scan(till)
        await drain(stack)
        await stack.wait_state(till, checkout["id"], "IDENTIFYING")
        exchange = await command_as_claimed(stack, checkout["id"], "EXCHANGE_TOKEN")
        without_club = OutboxWorker(
            services(stack).ctx, services(stack).checkouts, outbox(stack).vipps
        )

        await without_club.dispatch(exchange)
        await run_outbox(stack)

        sent = await stack.wait_for(till, checkout["id"], lambda c: c["paymentSent"])
        assert sent["state"] == "PAYMENT_REQUESTED"
        assert sent["member"] is None  # nobody identified, nobody enrolled
        rows = await outbox_rows(stack, checkout["id"])
        assert rows[0]["result"] == {"event": "IDENTIFY_FINISHED"}
        assert calls(rows) == [
            ("EXCHANGE_TOKEN", "DONE"),
            ("CREATE_PAYMENT", "DONE"),
        ]
        assert await ledger(stack, operation="exchangeCustomer") == []
