"""Vipps refusing the outbox's calls, and the outbox's own refusals to call.

Vipps's refusals come from the simulator's real rules (a capture above what is left, a refund
above what was captured, a cancel of a declined or fully captured payment, an expired customer
token, a reference that already exists), reached the way production reaches them: another
system on the sales unit moved money first, the customer declined, time passed. Each test checks
the money afterwards: state, totals against Vipps's, the outbox rows, the audit trail, and that
nothing took effect at Vipps twice.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import NoReturn

import httpx
import pytest
from sqlalchemy import delete

from app.models import Checkout
from app.service.bootstrap import vipps_clients, vipps_http_client
from app.service.context import utcnow
from app.service.keys import VippsKeys
from app.vipps.errors import VippsRejected
from app.workers.outbox import OutboxWorker
from tests.api.support import effective_calls, ledger
from tests.service.support import (
    NOTHING,
    at_vipps,
    audit_trail,
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
    requested,
    resync,
    run_outbox,
    services,
    till_post,
    totals,
    while_outbox_runs,
)
from tests.support.stack import Stack, service_settings
from tests.support.waiting import eventually


async def portal(stack: Stack, reference: str, action: str, value: int) -> None:
    """Another system on the sales unit moves money on our payment (the merchant portal)."""
    response = await at_vipps(
        stack,
        "POST",
        f"/epayment/v1/payments/{reference}/{action}",
        json={"modificationAmount": {"currency": "NOK", "value": value}},
        key=f"portal-{action}-{value}",
    )
    assert response.status_code == 200, response.text


async def test_a_capture_vipps_refuses_leaves_the_sale_authorized_and_capturable(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await authorized(stack, till, captureMode="MANUAL")
        await pause_webhooks(stack)
        await portal(stack, checkout["reference"], "capture", 4000)

        refused = await while_outbox_runs(stack, till_post(stack, till, checkout["id"], "capture"))

        assert refused.status_code == 200, refused.text
        body = refused.json()
        assert body["state"] == "AUTHORIZED"
        assert body["failure"]["code"] == "6090"
        assert totals(body) == {**NOTHING, "authorized": 10000}
        [_, capture] = await outbox_rows(stack, checkout["id"])
        assert (capture["kind"], capture["status"], capture["amount"]) == (
            "CAPTURE",
            "FAILED",
            10000,
        )
        assert "6090" in capture["last_error"]
        assert ("outbox:capture", "capture_failed") in await audit_trail(stack, checkout["id"])

        # Once we know what Vipps did, the till captures what is left — never more.
        assert (await resync(stack, checkout["id"])).json()["capturedAmount"] == 4000
        rest = await while_outbox_runs(stack, till_post(stack, till, checkout["id"], "capture"))
        assert rest.json()["state"] == "CAPTURED"
        assert rest.json()["capturedAmount"] == 10000
        assert await payment_at_vipps(stack, checkout["reference"]) == totals(rest.json())
        captures = await ledger(stack, reference=checkout["reference"], operation="capturePayment")
        assert [(e["status"], e["effect"]) for e in captures] == [
            (200, True),  # the portal's 4000
            (400, False),  # our 10000, refused
            (200, True),  # our 6000
        ]


async def test_a_refund_vipps_refuses_moves_nothing_and_the_refund_it_knows_is_learnt(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await authorized(stack, till)
        await run_outbox(stack)  # the auto capture
        await pause_webhooks(stack)
        await portal(stack, checkout["reference"], "refund", 6000)

        refused = await while_outbox_runs(
            stack, till_post(stack, till, checkout["id"], "refund", amount=5000)
        )

        body = refused.json()
        assert (body["state"], body["refundedAmount"]) == ("CAPTURED", 0)
        assert body["failure"]["code"] == "6150"
        rows = await outbox_rows(stack, checkout["id"])
        assert calls(rows)[-1] == ("REFUND", "FAILED")
        assert ("outbox:refund", "refund_failed") in await audit_trail(stack, checkout["id"])
        assert (await payment_at_vipps(stack, checkout["reference"]))["refunded"] == 6000

        repaired = (await resync(stack, checkout["id"])).json()
        assert (repaired["state"], repaired["refundedAmount"]) == ("PARTIALLY_REFUNDED", 6000)
        assert await payment_at_vipps(stack, checkout["reference"]) == totals(repaired)
        # The rest can still be refunded, and only the rest.
        over = await till_post(stack, till, checkout["id"], "refund", amount=4001)
        assert over.status_code == 409, over.text
        assert over.json()["code"] == "amount_exceeds_captured"


async def test_a_cancel_refused_because_the_customer_declined_ends_the_sale_declined(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await requested(stack, till)
        await pause_webhooks(stack)
        declined = await stack.sim.post(f"/_sim/payments/{checkout['reference']}/decline", json={})
        assert declined.status_code == 200, declined.text

        cancelled = await while_outbox_runs(stack, till_post(stack, till, checkout["id"], "cancel"))

        # Vipps refuses to cancel a declined payment; the outbox reads it and learns why.
        assert cancelled.json()["state"] == "CANCELLED"
        assert totals(cancelled.json()) == NOTHING
        assert calls(await outbox_rows(stack, checkout["id"])) == [
            ("CREATE_PAYMENT", "DONE"),
            ("CANCEL", "DONE"),
        ]
        cancels = await ledger(stack, reference=checkout["reference"], operation="cancelPayment")
        assert [(e["status"], e["effect"]) for e in cancels] == [(400, False)]
        assert ("outbox:cancel", "vipps_aborted") in await audit_trail(stack, checkout["id"])


async def test_a_release_vipps_refuses_after_a_partial_capture_does_not_strand_the_sale(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await authorized(stack, till, captureMode="MANUAL")
        await pause_webhooks(stack)
        await fault(stack, kind="error", status=503, operation="cancelPayment")
        capture = asyncio.ensure_future(
            till_post(stack, till, checkout["id"], "capture", amount=6000)
        )

        async def captured_part() -> bool:
            await run_outbox(stack)
            return (await payment_at_vipps(stack, checkout["reference"]))["captured"] == 6000

        await eventually(captured_part, "the partial capture")
        # Before our release of the other 4000 gets through, the portal captures them.
        await portal(stack, checkout["reference"], "capture", 4000)
        await clear_faults(stack)

        answered = await while_outbox_runs(stack, capture)

        body = answered.json()
        assert (body["state"], body["capturedAmount"]) == ("CAPTURED", 6000)
        assert body["failure"]["code"] == "6040"
        assert calls(await outbox_rows(stack, checkout["id"])) == [
            ("CREATE_PAYMENT", "DONE"),
            ("CAPTURE", "DONE"),
            ("CANCEL", "FAILED"),
        ]
        ours = [
            e
            for e in await ledger(stack, reference=checkout["reference"])
            if e["effect"]
            and e["operation"].endswith("Payment")
            and not (e["idempotencyKey"] or "").startswith("portal-")
        ]
        assert [(e["operation"], e["replay"]) for e in ours] == [
            ("createPayment", False),
            ("capturePayment", False),
        ]
        assert ("outbox:cancel", "cancel_failed") in await audit_trail(stack, checkout["id"])


async def test_a_create_vipps_refuses_ends_the_sale_failed_with_nothing_at_vipps(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await stack.checkout(till)
        await stack.scan(till)
        await stack.wait_state(till, checkout["id"], "PAYMENT_REQUESTED")
        # By the time the request goes out, Vipps no longer honours the customer token.
        advanced = await stack.sim.post("/_sim/clock/advance", json={"seconds": 960})
        assert advanced.status_code == 200, advanced.text
        await run_outbox(stack)

        failed = await stack.get(till, checkout["id"])
        assert (failed["state"], failed["final"], failed["paymentSent"]) == ("FAILED", True, False)
        assert failed["failure"]["code"] == "rejected"
        assert failed["failure"]["detail"].startswith("Vipps")
        assert calls(await outbox_rows(stack, checkout["id"])) == [("CREATE_PAYMENT", "FAILED")]
        gone = await stack.sim.get(f"/_sim/payments/{checkout['reference']}")
        assert gone.status_code == 404
        assert ("outbox:create_payment", "payment_create_refused") in await audit_trail(
            stack, checkout["id"]
        )


async def test_a_create_whose_key_vipps_forgot_is_not_taken_for_a_refusal(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await stack.checkout(till)
        # The first attempt creates the payment but its answer is lost; the next one cannot ask
        # Vipps about it and sends again — after Vipps has forgotten the key (its retention is
        # unverified), so the answer is a conflict: "reference already exists".
        await fault(stack, kind="drop_response", operation="createPayment", times=1)
        await fault(stack, kind="error", status=503, operation="getPayment", times=1)
        await stack.scan(till)
        await stack.wait_state(till, checkout["id"], "PAYMENT_REQUESTED")
        await run_outbox(stack)
        stack.simulator.state.idempotency.clear()

        async def created() -> bool:
            await run_outbox(stack)
            return (await stack.get(till, checkout["id"]))["paymentSent"]

        await eventually(created, "the payment to be taken as created")

        [create] = await outbox_rows(stack, checkout["id"])
        assert (create["status"], create["attempts"]) == ("DONE", 3)
        creates = await ledger(stack, reference=checkout["reference"], operation="createPayment")
        assert [(e["status"], e["effect"]) for e in creates] == [(201, True), (409, False)]
        assert (await stack.get(till, checkout["id"]))["state"] == "PAYMENT_REQUESTED"

        await stack.approve(checkout["reference"])
        await stack.wait_for(till, checkout["id"], lambda c: c["authorizedAmount"] == 10000)
        await run_outbox(stack)
        done = await stack.get(till, checkout["id"])
        assert done["state"] == "CAPTURED"
        assert await payment_at_vipps(stack, checkout["reference"]) == totals(done)


async def test_revoked_credentials_hold_a_capture_back_until_they_work_again(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await authorized(stack, till)  # the auto capture is queued
        # An outbox running with credentials Vipps no longer accepts.
        revoked = service_settings(database_url, vipps={"client_secret": "revoked-secret"})
        tried_at = utcnow()
        assert stack.sim_app is not None
        async with vipps_http_client(revoked, httpx.ASGITransport(app=stack.sim_app)) as http:
            ctx = services(stack).ctx
            keys = VippsKeys(revoked, ctx.sessions, ctx.secrets, clock=ctx.clock)
            _, vipps = vipps_clients(revoked, http, ctx.metrics, keys)
            stale = OutboxWorker(services(stack).ctx, services(stack).checkouts, vipps)
            assert await stale.run_once() == 1

        [_, capture] = await outbox_rows(stack, checkout["id"])
        assert (capture["kind"], capture["status"], capture["attempts"]) == (
            "CAPTURE",
            "PENDING",
            1,
        )
        # Not hammered: the next attempt waits at least half a minute.
        assert capture["next_attempt_at"] >= tried_at + timedelta(seconds=30)
        assert await outbox(stack).run_once() == 0
        assert "capturePayment" not in await effective_calls(stack, checkout["reference"])

        # Half a minute later, with credentials that work, the same capture goes through.
        later = utcnow() + timedelta(seconds=31)
        services(stack).ctx.clock = lambda: later
        await run_outbox(stack)
        done = await stack.get(till, checkout["id"])
        assert (done["state"], done["capturedAmount"]) == ("CAPTURED", 10000)
        [_, capture] = await outbox_rows(stack, checkout["id"])
        assert (capture["status"], capture["attempts"]) == ("DONE", 2)


async def test_a_command_another_worker_finished_keeps_that_result(database_url: str) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await authorized(stack, till)
        stale = await command_as_claimed(stack, checkout["id"], "CAPTURE")
        await run_outbox(stack)  # this replica performs and records it
        other = OutboxWorker(services(stack).ctx, services(stack).checkouts, outbox(stack).vipps)

        # A replica whose lease ran out under a slow call sends it again (same key) and comes
        # back with the same answer: the result already recorded stands.
        await other.dispatch(stale)

        done = await stack.get(till, checkout["id"])
        assert (done["state"], done["capturedAmount"]) == ("CAPTURED", 10000)
        captures = await ledger(stack, reference=checkout["reference"], operation="capturePayment")
        assert [(e["effect"], e["replay"]) for e in captures] == [(True, False), (False, True)]
        assert await payment_at_vipps(stack, checkout["reference"]) == totals(done)
        trail = await audit_trail(stack, checkout["id"])
        assert trail.count(("outbox:capture", "capture_succeeded")) == 1


async def test_a_sixth_refund_in_a_minute_waits_for_vipps_limit(database_url: str) -> None:
    """Vipps allows 5 calls per minute per reference *and operation* (REFERENCE.md §7.11): the
    create and the capture before them do not count against the refunds."""
    async with driven_stack(database_url, checkout={"max_wait_seconds": 1}) as stack:
        till = await stack.register_till()
        checkout = await authorized(stack, till)
        await run_outbox(stack)  # create and capture: not refunds, so not in the refunds' budget
        for _ in range(5):
            refunded = await while_outbox_runs(
                stack, till_post(stack, till, checkout["id"], "refund", amount=1000)
            )
            assert refunded.status_code == 200, refunded.text

        asked_at = utcnow()
        waiting = await till_post(stack, till, checkout["id"], "refund", amount=1000)
        assert waiting.status_code == 200, waiting.text
        await run_outbox(stack)

        [*_, last] = await outbox_rows(stack, checkout["id"])
        assert (last["kind"], last["status"], last["last_error"]) == (
            "REFUND",
            "PENDING",
            "rate limited",
        )
        assert last["next_attempt_at"] > asked_at  # held back, not sent
        refunds = await ledger(stack, reference=checkout["reference"], operation="refundPayment")
        assert len(refunds) == 5  # the sixth was not sent, so Vipps never answered 429
        assert (await stack.get(till, checkout["id"]))["refundedAmount"] == 5000


async def test_a_command_whose_checkout_was_deleted_fails_without_calling_vipps(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await authorized(stack, till)
        calls_before = len(await ledger(stack))
        # Removed by hand (the service never deletes a checkout).
        async with services(stack).ctx.sessions() as session, session.begin():
            await session.execute(delete(Checkout).where(Checkout.id == checkout["id"]))

        await run_outbox(stack)

        [_, capture] = await outbox_rows(stack, checkout["id"])
        assert (capture["status"], capture["last_error"]) == (
            "FAILED",
            "checkout no longer exists",
        )
        assert len(await ledger(stack)) == calls_before
        assert await outbox(stack).run_once() == 0  # not retried


async def test_one_command_dispatched_twice_at_once_is_sent_once(database_url: str) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await authorized(stack, till)
        command = await command_as_claimed(stack, checkout["id"], "CAPTURE")

        await asyncio.gather(outbox(stack).dispatch(command), outbox(stack).dispatch(command))

        captures = await ledger(stack, reference=checkout["reference"], operation="capturePayment")
        assert [(e["effect"], e["replay"]) for e in captures] == [(True, False)]
        done = await stack.get(till, checkout["id"])
        assert (done["state"], done["capturedAmount"]) == ("CAPTURED", 10000)


async def test_a_capture_whose_connection_dropped_before_vipps_acted_is_sent_again_once(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await authorized(stack, till)
        await fault(stack, kind="reset", operation="capturePayment", times=1)

        async def captured() -> bool:
            await run_outbox(stack)
            return (await stack.get(till, checkout["id"]))["state"] == "CAPTURED"

        # The next attempt reads the payment first, finds nothing captured, and sends again.
        await eventually(captured, "the capture to be sent again")
        [_, capture] = await outbox_rows(stack, checkout["id"])
        assert (capture["status"], capture["attempts"], capture["outcome_unknown"]) == (
            "DONE",
            2,
            True,
        )
        assert (await effective_calls(stack, checkout["reference"]))["capturePayment"] == 1
        done = await stack.get(till, checkout["id"])
        assert await payment_at_vipps(stack, checkout["reference"]) == totals(done)


async def test_a_refusal_after_an_unknown_outcome_is_still_a_refusal(database_url: str) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await stack.checkout(till)
        # The first attempt's connection drops before Vipps acts; by the next one Vipps no
        # longer honours the customer token. Only a conflict may be taken for "created".
        await fault(stack, kind="reset", operation="createPayment", times=1)
        await stack.scan(till)
        await stack.wait_state(till, checkout["id"], "PAYMENT_REQUESTED")
        await run_outbox(stack)
        advanced = await stack.sim.post("/_sim/clock/advance", json={"seconds": 960})
        assert advanced.status_code == 200, advanced.text

        async def ended() -> bool:
            await run_outbox(stack)
            return (await stack.get(till, checkout["id"]))["state"] == "FAILED"

        await eventually(ended, "the refused create to end the sale")
        [create] = await outbox_rows(stack, checkout["id"])
        assert (create["status"], create["attempts"]) == ("FAILED", 2)
        assert (await stack.sim.get(f"/_sim/payments/{checkout['reference']}")).status_code == 404


async def test_a_capture_refused_without_a_code_is_not_sent_again_by_repairs(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal Vipps gives no error code is still a recorded refusal: the repair that
    re-requests a lost auto capture must not take it for one and re-send it on every pass."""
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await authorized(stack, till)  # the auto capture is queued

        async def refuse_without_a_code(*args: object, **kwargs: object) -> NoReturn:
            raise VippsRejected("capture refused", operation="capturePayment", status=400)

        monkeypatch.setattr(outbox(stack).vipps, "capture_payment", refuse_without_a_code)
        await run_outbox(stack)
        refused = await stack.get(till, checkout["id"])
        assert refused["state"] == "AUTHORIZED"
        assert refused["failure"]["code"] == "rejected"

        monkeypatch.undo()
        repaired = await resync(stack, checkout["id"])
        assert repaired.status_code == 200, repaired.text
        await run_outbox(stack)
        assert calls(await outbox_rows(stack, checkout["id"])) == [
            ("CREATE_PAYMENT", "DONE"),
            ("CAPTURE", "FAILED"),
        ]
        assert await payment_at_vipps(stack, checkout["reference"]) == {
            **NOTHING,
            "authorized": 10000,
        }
