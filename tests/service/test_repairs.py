"""Reconciliation: what Vipps knows and we missed is repaired from a read of the payment.

Each test makes the two sides disagree the way it happens in production — a webhook that never
arrives (deliveries paused), an answer lost on the way back (the simulator's ``drop_response``),
another system on the same sales unit (the merchant portal) moving money — then asks Vipps
through the operators' resync (``CheckoutService.sync_with_vipps``) or the reconciler, and checks
the money: our totals against Vipps's, the calls we made, and the audit trail.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from app.models import Checkout, OutboxCommand
from app.service.context import utcnow
from tests.api.support import assert_problem, effective_calls
from tests.service.support import (
    NOTHING,
    at_vipps,
    audit_trail,
    authorized,
    calls,
    clear_faults,
    driven_stack,
    fault,
    outbox_rows,
    pause_webhooks,
    payment_at_vipps,
    reconciler,
    requested,
    resync,
    run_outbox,
    services,
    till_post,
    totals,
    while_outbox_runs,
)
from tests.support.stack import Stack
from tests.support.waiting import eventually


async def resynced(stack: Stack, checkout_id: str) -> dict[str, Any]:
    response = await resync(stack, checkout_id)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_capture_made_at_vipps_is_recorded_and_not_made_again(database_url: str) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await authorized(stack, till, captureMode="MANUAL")
        await pause_webhooks(stack)
        portal = await at_vipps(
            stack,
            "POST",
            f"/epayment/v1/payments/{checkout['reference']}/capture",
            json={"modificationAmount": {"currency": "NOK", "value": 10000}},
            key="portal-capture-1",
        )
        assert portal.status_code == 200, portal.text

        repaired = await resynced(stack, checkout["id"])

        assert repaired["state"] == "CAPTURED"
        assert totals(repaired) == {**NOTHING, "authorized": 10000, "captured": 10000}
        assert await payment_at_vipps(stack, checkout["reference"]) == totals(repaired)
        assert calls(await outbox_rows(stack, checkout["id"])) == [("CREATE_PAYMENT", "DONE")]
        assert ("admin", "capture_succeeded") in await audit_trail(stack, checkout["id"])
        # The till can no longer capture it a second time.
        again = await till_post(stack, till, checkout["id"], "capture")
        assert_problem(again, 409, "already_captured")
        assert (await effective_calls(stack, checkout["reference"]))["capturePayment"] == 1


async def test_a_release_made_at_vipps_closes_the_checkout(database_url: str) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await authorized(stack, till, captureMode="MANUAL")
        await pause_webhooks(stack)
        portal = await at_vipps(
            stack, "POST", f"/epayment/v1/payments/{checkout['reference']}/cancel", json={}
        )
        assert portal.status_code == 200, portal.text

        repaired = await resynced(stack, checkout["id"])

        assert repaired["state"] == "CANCELLED"
        assert totals(repaired) == {**NOTHING, "authorized": 10000, "cancelled": 10000}
        assert await payment_at_vipps(stack, checkout["reference"]) == totals(repaired)
        assert ("admin", "cancel_succeeded") in await audit_trail(stack, checkout["id"])
        refused = await till_post(stack, till, checkout["id"], "capture")
        assert_problem(refused, 409, "not_authorized")
        assert "capturePayment" not in await effective_calls(stack, checkout["reference"])


@pytest.mark.parametrize(
    ("at_vipps_side", "state"),
    [("decline", "REJECTED"), ("expire", "EXPIRED"), ("portal cancel", "CANCELLED")],
)
async def test_a_payment_that_ended_at_vipps_ends_the_checkout(
    database_url: str, at_vipps_side: str, state: str
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await requested(stack, till)
        await pause_webhooks(stack)
        reference = checkout["reference"]
        if at_vipps_side == "portal cancel":
            ended = await at_vipps(stack, "POST", f"/epayment/v1/payments/{reference}/cancel")
        else:
            ended = await stack.sim.post(f"/_sim/payments/{reference}/{at_vipps_side}", json={})
        assert ended.status_code == 200, ended.text

        repaired = await resynced(stack, checkout["id"])

        assert repaired["state"] == state
        assert repaired["final"] is True
        assert repaired["capturedAmount"] == 0
        assert repaired["authorizedAmount"] == 0
        # A second read finds nothing more to do.
        assert (await resynced(stack, checkout["id"]))["version"] == repaired["version"]
        assert calls(await outbox_rows(stack, checkout["id"])) == [("CREATE_PAYMENT", "DONE")]


async def test_a_cancel_whose_answer_was_lost_is_recorded_from_vipps(database_url: str) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await authorized(stack, till, captureMode="MANUAL")
        await pause_webhooks(stack)
        # The release takes effect at Vipps but its answer is lost; Vipps then stays down for
        # our cancels, so only a read of the payment can tell what happened.
        await fault(stack, kind="drop_response", operation="cancelPayment", times=1)
        await fault(stack, kind="error", status=503, operation="cancelPayment")
        cancel = asyncio.ensure_future(till_post(stack, till, checkout["id"], "cancel"))

        async def released_at_vipps() -> bool:
            await run_outbox(stack)
            return (await payment_at_vipps(stack, checkout["reference"]))["cancelled"] > 0

        await eventually(released_at_vipps, "the release to reach Vipps")
        [_, release] = await outbox_rows(stack, checkout["id"])
        assert (release["kind"], release["status"], release["outcome_unknown"]) == (
            "CANCEL",
            "PENDING",
            True,
        )

        repaired = await resynced(stack, checkout["id"])
        assert repaired["state"] == "CANCELLED"
        assert totals(repaired) == {**NOTHING, "authorized": 10000, "cancelled": 10000}

        # Vipps recovers: the retry (same key) gets the original answer, which changes nothing.
        await clear_faults(stack)
        answered = await while_outbox_runs(stack, cancel)
        assert answered.status_code == 200, answered.text
        assert answered.json()["state"] == "CANCELLED"
        assert calls(await outbox_rows(stack, checkout["id"])) == [
            ("CREATE_PAYMENT", "DONE"),
            ("CANCEL", "DONE"),
        ]
        assert (await effective_calls(stack, checkout["reference"]))["cancelPayment"] == 1
        trail = await audit_trail(stack, checkout["id"])
        assert trail.count(("admin", "cancel_succeeded")) == 1


async def test_an_approval_before_our_cancel_keeps_the_reservation_when_the_store_says_so(
    database_url: str,
) -> None:
    async with driven_stack(database_url, checkout={"cancel_after_approval": "keep"}) as stack:
        till = await stack.register_till()
        checkout = await requested(stack, till)
        await pause_webhooks(stack)
        await fault(stack, kind="error", status=503, operation="cancelPayment")
        cancel = asyncio.ensure_future(till_post(stack, till, checkout["id"], "cancel"))
        await stack.wait_state(till, checkout["id"], "CANCELLING")
        await run_outbox(stack)  # the cancel (only if not yet approved) meets the outage
        await stack.approve(checkout["reference"])  # ...and the customer approves meanwhile

        repaired = await resynced(stack, checkout["id"])
        # The store keeps such a reservation for the till, which captures it by hand.
        assert repaired["state"] == "AUTHORIZED"
        assert repaired["captureMode"] == "MANUAL"
        assert totals(repaired) == {**NOTHING, "authorized": 10000}
        assert ("admin", "cancel_refused_already_authorized") in await audit_trail(
            stack, checkout["id"]
        )

        await clear_faults(stack)
        answered = await while_outbox_runs(stack, cancel)
        assert answered.json()["state"] == "AUTHORIZED"
        captured = await while_outbox_runs(stack, till_post(stack, till, checkout["id"], "capture"))
        assert captured.status_code == 200, captured.text
        assert captured.json()["state"] == "CAPTURED"
        assert await payment_at_vipps(stack, checkout["reference"]) == {
            **NOTHING,
            "authorized": 10000,
            "captured": 10000,
        }
        assert calls(await outbox_rows(stack, checkout["id"])) == [
            ("CREATE_PAYMENT", "DONE"),
            ("CANCEL", "DONE"),
            ("CAPTURE", "DONE"),
        ]


async def test_a_lost_capture_decision_is_made_again_and_captures_once(database_url: str) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await authorized(stack, till)  # AUTO: the capture is queued
        await lose_the_queued_capture(stack, checkout["id"])

        # The reconciler polls an authorized checkout once its next poll is due.
        services(stack).ctx.clock = lambda: utcnow() + timedelta(minutes=1)
        assert await reconciler(stack).run_once() == 1
        await run_outbox(stack)

        done = await stack.get(till, checkout["id"])
        assert done["state"] == "CAPTURED"
        assert await payment_at_vipps(stack, checkout["reference"]) == totals(done)
        assert (await effective_calls(stack, checkout["reference"]))["capturePayment"] == 1
        assert [(k, s) for k, s in calls(await outbox_rows(stack, checkout["id"]))] == [
            ("CREATE_PAYMENT", "DONE"),
            ("CAPTURE", "CANCELLED"),
            ("CAPTURE", "DONE"),
        ]
        assert ("reconciler", "capture_requested") in await audit_trail(stack, checkout["id"])


async def test_a_repair_the_checkout_no_longer_allows_is_skipped(database_url: str) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await authorized(stack, till)
        await lose_the_queued_capture(stack, checkout["id"])
        # The till captures part of it by hand; the release of the rest is held up at Vipps.
        await fault(stack, kind="error", status=503, operation="cancelPayment")
        capture = asyncio.ensure_future(
            till_post(stack, till, checkout["id"], "capture", amount=6000)
        )

        async def captured_part() -> bool:
            await run_outbox(stack)
            return (await payment_at_vipps(stack, checkout["reference"]))["captured"] == 6000

        await eventually(captured_part, "the partial capture")

        # The read sees an auto-capture sale with no capture queued and asks for one; with the
        # release on its way nothing is capturable, so that repair is refused and skipped.
        repaired = await resynced(stack, checkout["id"])
        assert repaired["state"] == "AUTHORIZED"
        assert totals(repaired) == {**NOTHING, "authorized": 10000, "captured": 6000}
        assert ("admin", "capture_requested") not in await audit_trail(stack, checkout["id"])

        await clear_faults(stack)
        answered = await while_outbox_runs(stack, capture)
        assert answered.json()["state"] == "CAPTURED"
        # Our books are Vipps's: the release's own answer recorded the 4000 released.
        assert totals(answered.json()) == await payment_at_vipps(stack, checkout["reference"])
        assert await payment_at_vipps(stack, checkout["reference"]) == {
            **NOTHING,
            "authorized": 10000,
            "captured": 6000,
            "cancelled": 4000,
        }
        assert (await effective_calls(stack, checkout["reference"]))["capturePayment"] == 1


async def test_an_unpaid_end_that_vipps_shows_authorized_is_released(database_url: str) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await stack.checkout(till)
        # The create reaches Vipps but its answer is lost, and Vipps cannot be asked about it;
        # by the retry the customer token has run out, so the checkout ends FAILED — while the
        # payment request sits in the customer's app.
        await fault(stack, kind="drop_response", operation="createPayment", times=1)
        await fault(stack, kind="error", status=503, operation="getPayment", times=1)
        await stack.scan(till)
        await stack.wait_state(till, checkout["id"], "PAYMENT_REQUESTED")
        await run_outbox(stack)
        later = utcnow() + timedelta(minutes=20)
        services(stack).ctx.clock = lambda: later
        await run_outbox(stack)
        failed = await stack.get(till, checkout["id"])
        assert failed["state"] == "FAILED"
        assert failed["failure"]["code"] == "customer_token_expired"

        await pause_webhooks(stack)
        await stack.approve(checkout["reference"])
        repaired = await resynced(stack, checkout["id"])
        assert repaired["state"] == "FAILED"  # a final state stays final
        await run_outbox(stack)  # the release

        assert await payment_at_vipps(stack, checkout["reference"]) == {
            **NOTHING,
            "authorized": 10000,
            "cancelled": 10000,
        }
        assert calls(await outbox_rows(stack, checkout["id"])) == [
            ("CREATE_PAYMENT", "FAILED"),
            ("CANCEL", "DONE"),
        ]
        assert ("admin", "vipps_authorized") in await audit_trail(stack, checkout["id"])


async def test_a_checkout_never_sent_to_vipps_has_nothing_to_repair(database_url: str) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await stack.checkout(till)
        repaired = await resynced(stack, checkout["id"])
        assert (repaired["state"], repaired["version"]) == ("AWAITING_SCAN", checkout["version"])


# ---- helpers ------------------------------------------------------------------------------------


async def lose_the_queued_capture(stack: Stack, checkout_id: str) -> None:
    """Fault injection: the auto-capture decision is lost (as after a crash between the
    authorization and its capture in an older version, or a restore from backup): its outbox
    row is set aside, and the checkout no longer shows a capture on its way."""
    async with services(stack).ctx.sessions() as session, session.begin():
        lost = await session.execute(
            update(OutboxCommand)
            .where(
                OutboxCommand.checkout_id == checkout_id,
                OutboxCommand.kind == "CAPTURE",
                OutboxCommand.status == "PENDING",
            )
            .values(status="CANCELLED")
        )
        assert lost.rowcount == 1
        await session.execute(
            update(Checkout).where(Checkout.id == checkout_id).values(capture_pending_value=0)
        )


async def test_a_poll_vipps_does_not_answer_changes_nothing_and_is_tried_again(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await requested(stack, till)
        await pause_webhooks(stack)
        await stack.approve(checkout["reference"])
        outage = await fault(stack, kind="error", status=503, operation="getPayment")
        services(stack).ctx.clock = lambda: utcnow() + timedelta(minutes=1)

        assert await reconciler(stack).run_once() == 0
        rules = (await stack.sim.get("/_sim/faults")).json()["rules"]
        attempts = services(stack).ctx.settings.vipps.max_retries + 1  # reads are retried
        assert [r["fired"] for r in rules if r["id"] == outage] == [attempts]
        assert (await stack.get(till, checkout["id"]))["state"] == "PAYMENT_REQUESTED"

        # Vipps answers again: the next pass (its poll rescheduled) learns of the approval.
        await clear_faults(stack)
        services(stack).ctx.clock = lambda: utcnow() + timedelta(minutes=2)
        assert await reconciler(stack).run_once() == 1
        assert (await stack.get(till, checkout["id"]))["authorizedAmount"] == 10000


async def test_a_payment_approved_while_our_create_answer_was_lost_is_taken_as_authorized(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await stack.checkout(till)
        await fault(stack, kind="drop_response", operation="createPayment", times=1)
        await stack.scan(till)
        await stack.wait_state(till, checkout["id"], "PAYMENT_REQUESTED")
        await pause_webhooks(stack)
        await run_outbox(stack)  # created at Vipps; the answer is lost
        await stack.approve(checkout["reference"])  # the push reached the customer anyway

        async def asked_again() -> bool:
            await run_outbox(stack)
            return (await outbox_rows(stack, checkout["id"]))[0]["status"] == "DONE"

        await eventually(asked_again, "the create's retry to read the payment")
        await run_outbox(stack)  # the auto capture the authorization decided
        done = await stack.get(till, checkout["id"])
        assert (done["state"], done["capturedAmount"]) == ("CAPTURED", 10000)
        trail = await audit_trail(stack, checkout["id"])
        assert ("outbox:create_payment", "vipps_authorized") in trail
        assert await payment_at_vipps(stack, checkout["reference"]) == totals(done)
        assert (await effective_calls(stack, checkout["reference"]))["createPayment"] == 1


async def test_a_manual_authorization_in_agreement_with_vipps_is_left_for_the_till(
    database_url: str,
) -> None:
    async with driven_stack(database_url) as stack:
        till = await stack.register_till()
        checkout = await authorized(stack, till, captureMode="MANUAL")

        repaired = await resynced(stack, checkout["id"])
        await run_outbox(stack)

        assert (repaired["state"], repaired["version"]) == ("AUTHORIZED", checkout["version"])
        assert "capturePayment" not in await effective_calls(stack, checkout["reference"])
        assert calls(await outbox_rows(stack, checkout["id"])) == [("CREATE_PAYMENT", "DONE")]
