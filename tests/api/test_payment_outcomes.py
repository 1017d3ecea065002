"""How a payment ends: declined, expired, cancelled (also racing the customer's approval),
captured manually in full or in part, refunded — with what Vipps's ledger shows for each."""

from __future__ import annotations

from typing import Any

from app.models import Checkout
from tests.api.support import (
    assert_problem,
    checked_stack,
    effective_calls,
    ledger,
    sale,
    sessions,
)
from tests.support.stack import Stack

# The reconciler stays out of the way where a test orders events by hand (webhooks paused).
NO_EARLY_POLL = {"reconcile_first_poll_seconds": 60.0}


async def post(
    stack: Stack, till: dict[str, Any], path: str, body: Any = None, key: str | None = None
) -> Any:
    headers = stack.till_headers(till)
    if key:
        headers["Idempotency-Key"] = key
    return await stack.service.post(f"/api/v1/checkouts/{path}", json=body, headers=headers)


async def test_a_declined_payment_is_rejected(database_url: str) -> None:
    async with checked_stack(database_url) as stack:
        await stack.ensure_webhook()
        till, checkout = await sale(stack)
        await stack.decline(checkout["reference"])
        done = await stack.wait_state(till, checkout["id"], "REJECTED")
        assert done["final"] is True
        assert done["capturedAmount"] == 0
        assert done["finishedAt"] is not None
        assert "capturePayment" not in await effective_calls(stack, checkout["reference"])
        # The till is free for the next sale.
        assert (await stack.checkout(till, 500))["state"] == "AWAITING_SCAN"


async def test_a_payment_vipps_expires_ends_expired(sqlite_url: str) -> None:
    async with checked_stack(sqlite_url) as stack:
        await stack.ensure_webhook()
        till, checkout = await sale(stack)
        expired = await stack.sim.post(f"/_sim/payments/{checkout['reference']}/expire", json={})
        assert expired.status_code == 200
        done = await stack.wait_state(till, checkout["id"], "EXPIRED")
        assert done["final"] is True
        assert done["authorizedAmount"] == 0


async def test_cancel_before_approval_returns_cancelled(database_url: str) -> None:
    async with checked_stack(database_url) as stack:
        await stack.ensure_webhook()
        till, checkout = await sale(stack)
        response = await post(stack, till, f"{checkout['id']}/cancel", key="cancel-1")
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "CANCELLED"
        calls = await ledger(stack, reference=checkout["reference"], operation="cancelPayment")
        assert [(c["status"], c["effect"]) for c in calls] == [(200, True)]
        payment = (await stack.sim.get(f"/_sim/payments/{checkout['reference']}")).json()
        assert payment["state"] == "TERMINATED"
        # Cancelling again is not an error and calls Vipps no more.
        again = await post(stack, till, f"{checkout['id']}/cancel")
        assert again.status_code == 200
        assert again.json()["state"] == "CANCELLED"
        assert len(await ledger(stack, operation="cancelPayment")) == 1
        # The customer can no longer approve it.
        late = await stack.sim.post(f"/_sim/payments/{checkout['reference']}/approve", json={})
        assert late.status_code == 409


async def test_cancel_of_an_unscanned_checkout_needs_no_vipps_call(sqlite_url: str) -> None:
    async with checked_stack(sqlite_url) as stack:
        till = await stack.register_till()
        checkout = await stack.checkout(till, 2000)
        response = await post(stack, till, f"{checkout['id']}/cancel")
        assert response.status_code == 200
        assert response.json()["state"] == "CANCELLED"
        assert await ledger(stack, reference=checkout["reference"]) == []


async def test_approval_racing_a_cancel_is_released_by_default(database_url: str) -> None:
    async with checked_stack(database_url, workers=NO_EARLY_POLL) as stack:
        await stack.ensure_webhook()
        till, checkout = await sale(stack)
        await stack.sim.post("/_sim/webhooks/pause")
        await stack.approve(checkout["reference"])  # we have not heard of it yet
        response = await post(stack, till, f"{checkout['id']}/cancel")
        assert response.status_code == 200, response.text
        cancelled = response.json()
        assert cancelled["state"] == "CANCELLED"
        assert cancelled["authorizedAmount"] == 10000
        assert cancelled["cancelledAmount"] == 10000
        assert cancelled["capturedAmount"] == 0
        calls = await ledger(stack, reference=checkout["reference"], operation="cancelPayment")
        # First cancelTransactionOnly (refused: 6060, already approved), then the release.
        assert [(c["status"], c["effect"]) for c in calls] == [(400, False), (200, True)]
        assert "capturePayment" not in await effective_calls(stack, checkout["reference"])
        await stack.sim.post("/_sim/webhooks/resume")
        await stack.simulator.webhooks.drain(5.0)
        after = await stack.get(till, checkout["id"])
        assert after["state"] == "CANCELLED"
        assert after["capturedAmount"] == 0


async def test_approval_racing_a_cancel_is_kept_for_the_till_when_configured(
    database_url: str,
) -> None:
    async with checked_stack(
        database_url, workers=NO_EARLY_POLL, checkout={"cancel_after_approval": "keep"}
    ) as stack:
        await stack.ensure_webhook()
        till, checkout = await sale(stack)
        await stack.sim.post("/_sim/webhooks/pause")
        await stack.approve(checkout["reference"])
        response = await post(stack, till, f"{checkout['id']}/cancel")
        assert response.status_code == 200, response.text
        kept = response.json()
        assert kept["state"] == "AUTHORIZED"
        assert kept["captureMode"] == "MANUAL"  # nothing is captured behind the till's back
        assert kept["authorizedAmount"] == 10000
        calls = await ledger(stack, reference=checkout["reference"], operation="cancelPayment")
        assert [(c["status"], c["effect"]) for c in calls] == [(400, False)]
        await stack.sim.post("/_sim/webhooks/resume")
        await stack.simulator.webhooks.drain(5.0)
        assert (await stack.get(till, checkout["id"]))["state"] == "AUTHORIZED"
        assert "capturePayment" not in await effective_calls(stack, checkout["reference"])
        # The till decides: here, it takes the money after all.
        captured = await post(stack, till, f"{checkout['id']}/capture")
        assert captured.status_code == 200, captured.text
        assert captured.json()["state"] == "CAPTURED"
        assert captured.json()["capturedAmount"] == 10000


async def test_manual_capture_of_everything(database_url: str) -> None:
    async with checked_stack(database_url) as stack:
        await stack.ensure_webhook()
        till, checkout = await sale(stack, 10000, captureMode="MANUAL")
        await stack.approve(checkout["reference"])
        authorized = await stack.wait_state(till, checkout["id"], "AUTHORIZED")
        assert authorized["authorizedAmount"] == 10000
        assert "capturePayment" not in await effective_calls(stack, checkout["reference"])
        too_much = await post(stack, till, f"{checkout['id']}/capture", {"amount": 10001})
        assert_problem(too_much, 409, "amount_exceeds_authorized")
        response = await post(stack, till, f"{checkout['id']}/capture", key="capture-1")
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "CAPTURED"
        assert response.json()["capturedAmount"] == 10000
        assert response.json()["cancelledAmount"] == 0
        replay = await post(stack, till, f"{checkout['id']}/capture", key="capture-1")
        assert replay.status_code == 200
        assert replay.json()["capturedAmount"] == 10000
        assert (await effective_calls(stack, checkout["reference"]))["capturePayment"] == 1
        again = await post(stack, till, f"{checkout['id']}/capture")
        assert_problem(again, 409, "already_captured")


async def test_partial_manual_capture_releases_the_rest(database_url: str) -> None:
    async with checked_stack(database_url) as stack:
        await stack.ensure_webhook()
        till, checkout = await sale(stack, 10000, captureMode="MANUAL")
        await stack.approve(checkout["reference"])
        await stack.wait_state(till, checkout["id"], "AUTHORIZED")
        response = await post(stack, till, f"{checkout['id']}/capture", {"amount": 6000})
        assert response.status_code == 200, response.text
        done = response.json()
        assert done["state"] == "CAPTURED"
        assert done["capturedAmount"] == 6000
        assert done["cancelledAmount"] == 4000
        payment = (await stack.sim.get(f"/_sim/payments/{checkout['reference']}")).json()
        assert payment["aggregate"]["capturedAmount"]["value"] == 6000
        assert payment["aggregate"]["cancelledAmount"]["value"] == 4000
        calls = await effective_calls(stack, checkout["reference"])
        assert calls["capturePayment"] == 1
        assert calls["cancelPayment"] == 1


async def test_cancel_after_approval_in_manual_mode_releases_the_reservation(
    sqlite_url: str,
) -> None:
    async with checked_stack(sqlite_url) as stack:
        await stack.ensure_webhook()
        till, checkout = await sale(stack, 10000, captureMode="MANUAL")
        await stack.approve(checkout["reference"])
        await stack.wait_state(till, checkout["id"], "AUTHORIZED")
        response = await post(stack, till, f"{checkout['id']}/cancel")
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "CANCELLED"
        assert response.json()["cancelledAmount"] == 10000
        payment = (await stack.sim.get(f"/_sim/payments/{checkout['reference']}")).json()
        assert payment["aggregate"]["cancelledAmount"]["value"] == 10000
        assert "capturePayment" not in await effective_calls(stack, checkout["reference"])


async def test_refunds_full_partial_repeated_and_never_more_than_captured(
    database_url: str,
) -> None:
    async with checked_stack(database_url) as stack:
        await stack.ensure_webhook()
        till, checkout = await sale(stack, 10000)
        await stack.approve(checkout["reference"])
        await stack.wait_state(till, checkout["id"], "CAPTURED")
        path = f"{checkout['id']}/refund"

        first = await post(stack, till, path, {"amount": 3000}, key="refund-1")
        assert first.status_code == 200, first.text
        assert (first.json()["state"], first.json()["refundedAmount"]) == (
            "PARTIALLY_REFUNDED",
            3000,
        )
        replay = await post(stack, till, path, {"amount": 3000}, key="refund-1")
        assert replay.json()["refundedAmount"] == 3000
        reused = await post(stack, till, path, {"amount": 2000}, key="refund-1")
        assert_problem(reused, 409, "idempotency_key_reused")

        second = await post(stack, till, path, {"amount": 2000})
        assert (second.json()["state"], second.json()["refundedAmount"]) == (
            "PARTIALLY_REFUNDED",
            5000,
        )
        over = await post(stack, till, path, {"amount": 5001})
        body = assert_problem(over, 409, "amount_exceeds_captured")
        assert "5000" in body["detail"]

        rest = await post(stack, till, path)
        assert rest.status_code == 200, rest.text
        assert (rest.json()["state"], rest.json()["refundedAmount"]) == ("REFUNDED", 10000)
        assert_problem(await post(stack, till, path, {"amount": 1}), 409, "already_refunded")

        refunds = await ledger(stack, reference=checkout["reference"], operation="refundPayment")
        assert [c["effect"] for c in refunds] == [True, True, True]
        payment = (await stack.sim.get(f"/_sim/payments/{checkout['reference']}")).json()
        assert payment["aggregate"]["refundedAmount"]["value"] == 10000


async def test_refund_and_capture_need_the_right_state(sqlite_url: str) -> None:
    async with checked_stack(sqlite_url) as stack:
        await stack.ensure_webhook()
        till, checkout = await sale(stack, 10000)
        assert_problem(
            await post(stack, till, f"{checkout['id']}/refund", {"amount": 100}),
            409,
            "not_captured",
        )
        assert_problem(await post(stack, till, f"{checkout['id']}/capture"), 409, "not_authorized")
        zero = await post(stack, till, f"{checkout['id']}/refund", {"amount": 0})
        body = assert_problem(zero, 422, "validation_error")
        assert [e["field"] for e in body["errors"]] == ["amount"]


async def test_lost_answers_from_vipps_are_resolved_without_acting_twice(
    database_url: str,
) -> None:
    async with checked_stack(database_url) as stack:
        await stack.ensure_webhook()
        for operation in ("createPayment", "capturePayment"):
            rule = {"kind": "drop_response", "operation": operation, "times": 1}
            assert (await stack.sim.post("/_sim/faults", json=rule)).status_code == 201
        till, checkout = await sale(stack, 6400)
        await stack.approve(checkout["reference"])
        done = await stack.wait_state(till, checkout["id"], "CAPTURED", timeout=15)
        assert done["capturedAmount"] == 6400
        calls = await ledger(stack, reference=checkout["reference"])
        for operation in ("createPayment", "capturePayment"):
            made = [c for c in calls if c["operation"] == operation]
            assert made[0]["responseDropped"] is True
            # Every attempt reused the first one's key; exactly one took effect.
            assert len({c["idempotencyKey"] for c in made}) == 1
            assert sum(1 for c in made if c["effect"] and not c["replay"]) == 1


async def test_a_lost_capture_answer_is_resent_with_the_same_key_while_vipps_cannot_be_asked(
    database_url: str,
) -> None:
    """After an unknown outcome the outbox asks Vipps first; when that GET fails too, it sends
    the capture again with the same Idempotency-Key (Vipps answers with the original outcome)
    instead of waiting for a GET to get through."""
    async with checked_stack(database_url, workers=NO_EARLY_POLL) as stack:
        await stack.ensure_webhook()
        till, checkout = await sale(stack, 5200)
        rules = [
            {"kind": "drop_response", "operation": "capturePayment", "times": 1},
            {"kind": "error", "status": 503, "operation": "getPayment"},
        ]
        for rule in rules:
            assert (await stack.sim.post("/_sim/faults", json=rule)).status_code == 201
        await stack.approve(checkout["reference"])
        done = await stack.wait_state(till, checkout["id"], "CAPTURED", timeout=15)
        assert done["capturedAmount"] == 5200
        captures = await ledger(stack, reference=checkout["reference"], operation="capturePayment")
        assert captures[0]["responseDropped"] is True
        assert len(captures) >= 2
        assert len({c["idempotencyKey"] for c in captures}) == 1
        assert sum(1 for c in captures if c["effect"] and not c["replay"]) == 1
        payment = (await stack.sim.get(f"/_sim/payments/{checkout['reference']}")).json()
        assert payment["aggregate"]["capturedAmount"]["value"] == 5200


async def test_each_mutating_call_is_stamped_no_earlier_than_vipps_received_it(
    database_url: str,
) -> None:
    """The 5-per-minute limit is Vipps's, counted when calls arrive. An attempt after a lost
    answer first asks for the payment (slow here), so its capture arrives well after the attempt
    began: the stamp the limit counts must not be earlier than that arrival."""
    async with checked_stack(database_url, workers=NO_EARLY_POLL) as stack:
        await stack.ensure_webhook()
        till, checkout = await sale(stack, 3100)
        rules = [
            {"kind": "drop_response", "operation": "capturePayment", "times": 1},
            # Asking for the payment is slow and then fails: the capture is re-sent after it.
            {"kind": "latency", "latencyMs": 700, "operation": "getPayment"},
            {"kind": "error", "status": 503, "operation": "getPayment"},
        ]
        for rule in rules:
            assert (await stack.sim.post("/_sim/faults", json=rule)).status_code == 201
        await stack.approve(checkout["reference"])
        await stack.wait_state(till, checkout["id"], "CAPTURED", timeout=15)
        captures = await ledger(stack, reference=checkout["reference"], operation="capturePayment")
        assert len(captures) == 2
        async with sessions(stack)() as session:
            row = await session.get(Checkout, checkout["id"])
            assert row is not None
            stamps = row.mutating_calls
        # createPayment, the dropped capture, the re-sent capture: one stamp each under its
        # operation's budget, and each stamp no earlier than Vipps's receipt of its call.
        assert isinstance(stamps, dict)
        calls = await ledger(stack, reference=checkout["reference"])
        for kind, operation, count in (
            ("CREATE_PAYMENT", "createPayment", 1),
            ("CAPTURE", "capturePayment", 2),
        ):
            arrivals = sorted(c["receivedAtEpoch"] for c in calls if c["operation"] == operation)
            assert len(stamps[kind]) == len(arrivals) == count
            for stamp, arrived in zip(sorted(stamps[kind]), arrivals, strict=True):
                assert stamp >= arrived


async def test_a_lost_create_answer_is_resent_with_the_same_key_while_vipps_cannot_be_asked(
    database_url: str,
) -> None:
    """The same for the payment request: its answer lost, every GET failing — the create is sent
    again with the same key and the push reaches the customer once."""
    async with checked_stack(database_url, workers=NO_EARLY_POLL) as stack:
        await stack.ensure_webhook()
        rules = [
            {"kind": "drop_response", "operation": "createPayment", "times": 1},
            {"kind": "error", "status": 503, "operation": "getPayment"},
        ]
        for rule in rules:
            assert (await stack.sim.post("/_sim/faults", json=rule)).status_code == 201
        _till, checkout = await sale(stack, 2700)
        assert checkout["state"] == "PAYMENT_REQUESTED"
        creates = await ledger(stack, reference=checkout["reference"], operation="createPayment")
        assert creates[0]["responseDropped"] is True
        assert len({c["idempotencyKey"] for c in creates}) == 1
        assert sum(1 for c in creates if c["effect"] and not c["replay"]) == 1
