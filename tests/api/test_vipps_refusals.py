"""What the service does with the refusals a merchant meets on real Vipps, each against the
simulator: per-operation rate limits, a sales unit not approved for PUSH_MESSAGE (5080), a
capture after the capture period (6100) or after the funds were released (6260), a transient
capture failure (6280), a cancel while the customer is authorizing (423 / 6250), a refund after
the refund window."""

from __future__ import annotations

import asyncio
from typing import Any

from app.domain.call_budget import recorded_calls, with_call
from app.simulator import SalesUnit, approved
from tests.api.support import checked_stack, ledger, sale
from tests.support.stack import Stack, simulator_config

NO_EARLY_POLL = {"reconcile_first_poll_seconds": 60.0}


async def _post(stack: Stack, till: dict[str, Any], path: str, body: Any = None) -> Any:
    response = await stack.service.post(
        f"/api/v1/checkouts/{path}", json=body, headers=stack.till_headers(till)
    )
    assert response.status_code == 200, response.text
    return response.json()


# ---- rate limits per operation ---------------------------------------------------------------


async def test_refunds_have_their_own_budget_next_to_create_and_capture(
    database_url: str,
) -> None:
    """The issue's sequence: create, capture, then four refunds within a minute. With one
    pooled budget the fourth refund waited ~54 s and the till's request came back unchanged;
    Vipps counts refunds apart from creates and captures, and so does the service now."""
    async with checked_stack(database_url) as stack:
        await stack.ensure_webhook()
        till, checkout = await sale(stack, 10000)
        await stack.approve(checkout["reference"])
        await stack.wait_state(till, checkout["id"], "CAPTURED")
        for n in range(1, 5):
            refunded = await _post(stack, till, f"{checkout['id']}/refund", {"amount": 1000})
            # The till's request returns with the refund done, not after its wait ran out.
            assert refunded["refundedAmount"] == 1000 * n, refunded
        refunds = await ledger(stack, reference=checkout["reference"], operation="refundPayment")
        assert [r["status"] for r in refunds] == [200, 200, 200, 200]


def test_stamps_are_kept_per_operation_and_the_older_pooled_list_still_counts() -> None:
    now = 1_000_000.0
    pooled = [now - 50, now - 40, now - 5]  # a row written before budgets were per operation
    assert recorded_calls(pooled, "REFUND") == pooled  # counts against every operation
    stored = with_call(pooled, "REFUND", now)
    assert stored == {"*": pooled, "REFUND": [now]}
    assert recorded_calls(stored, "REFUND") == [now, *pooled]
    assert recorded_calls(stored, "CAPTURE") == pooled
    later = with_call(stored, "CAPTURE", now + 45)  # the pooled stamps age out of the window
    assert later == {"*": [now - 5], "REFUND": [now], "CAPTURE": [now + 45]}
    assert recorded_calls({}, "CANCEL") == []
    assert recorded_calls(None, "CANCEL") == []


# ---- payment request refused ------------------------------------------------------------------


async def test_a_sales_unit_not_approved_for_push_fails_the_checkout_with_5080(
    database_url: str,
) -> None:
    config = simulator_config(sales_units=(approved(SalesUnit("123456")),))
    async with checked_stack(database_url, sim_config=config) as stack:
        await stack.ensure_webhook()
        # As a fresh test sales unit: PUSH_MESSAGE not approved.
        await stack.sim.post("/_sim/sales-units/123456", json={"pushMessageAllowed": False})
        till = await stack.register_till()
        checkout = await stack.checkout(till, 2500)
        await stack.scan(till)
        failed = await stack.wait_state(till, checkout["id"], "FAILED")
        assert failed["failure"]["code"] == "5080"
        assert "PUSH_MESSAGE is not approved" in failed["failure"]["detail"]


# ---- capture refused or retried --------------------------------------------------------------


async def test_a_capture_after_the_capture_period_fails_with_6100_and_says_so(
    database_url: str,
) -> None:
    config = simulator_config(capture_period_seconds=120)
    async with checked_stack(database_url, sim_config=config, workers=NO_EARLY_POLL) as stack:
        await stack.ensure_webhook()
        till, checkout = await sale(stack, 4000, captureMode="MANUAL")
        await stack.approve(checkout["reference"])
        await stack.wait_state(till, checkout["id"], "AUTHORIZED")
        stack.simulator.advance_clock(121)
        after = await _post(stack, till, f"{checkout['id']}/capture")
        assert after["state"] == "AUTHORIZED"
        assert after["capturedAmount"] == 0
        assert after["failure"]["code"] == "6100"
        assert "capture period expired" in after["failure"]["detail"]
        captures = await ledger(stack, reference=checkout["reference"], operation="capturePayment")
        assert [c["status"] for c in captures] == [400]  # refused once, not retried


async def test_funds_released_early_fail_the_capture_with_6260(database_url: str) -> None:
    async with checked_stack(database_url, workers=NO_EARLY_POLL) as stack:
        await stack.ensure_webhook()
        till, checkout = await sale(stack, 4000, captureMode="MANUAL")
        await stack.approve(checkout["reference"])
        await stack.wait_state(till, checkout["id"], "AUTHORIZED")
        await stack.sim.post(f"/_sim/payments/{checkout['reference']}/release-funds", json={})
        after = await _post(stack, till, f"{checkout['id']}/capture")
        assert after["capturedAmount"] == 0
        assert after["failure"]["code"] == "6260"
        assert "funds released early" in after["failure"]["detail"]


async def test_a_transient_capture_failure_6280_is_retried_with_the_same_key(
    database_url: str,
) -> None:
    async with checked_stack(database_url) as stack:
        await stack.ensure_webhook()
        till, checkout = await sale(stack, 6100)
        await stack.sim.post(
            f"/_sim/payments/{checkout['reference']}/fail-captures", json={"times": 2}
        )
        await stack.approve(checkout["reference"])
        done = await stack.wait_state(till, checkout["id"], "CAPTURED", timeout=20)
        assert done["capturedAmount"] == 6100
        assert done["failure"] is None
        captures = await ledger(stack, reference=checkout["reference"], operation="capturePayment")
        assert [c["status"] for c in captures] == [400, 400, 200]
        assert len({c["idempotencyKey"] for c in captures}) == 1
        assert [c["effect"] for c in captures] == [False, False, True]


# ---- cancel while the customer authorizes -----------------------------------------------------


async def test_a_cancel_while_the_customer_authorizes_waits_and_then_ends_thesale(
    database_url: str,
) -> None:
    """423 / 6250: Vipps cannot cancel mid-authorization; the service tries again later with
    the same key instead of giving up, and the sale ends once the customer is done."""
    async with checked_stack(database_url, workers=NO_EARLY_POLL) as stack:
        await stack.ensure_webhook()
        till, checkout = await sale(stack, 3000)
        reference = checkout["reference"]
        await stack.sim.post(f"/_sim/payments/{reference}/authorizing", json={})
        cancel = stack.service.post(
            f"/api/v1/checkouts/{checkout['id']}/cancel", headers=stack.till_headers(till)
        )
        pending = asyncio.ensure_future(cancel)
        while not await ledger(stack, reference=reference, operation="cancelPayment"):
            await asyncio.sleep(0.05)
        # The customer gives up in the app; the next cancel attempt meets an ended payment.
        await stack.decline(reference)
        response = await pending
        assert response.status_code == 200, response.text
        ended = await stack.wait_state(till, checkout["id"], "CANCELLED", "REJECTED")
        assert ended["final"] is True
        assert ended["capturedAmount"] == 0
        cancels = await ledger(stack, reference=reference, operation="cancelPayment")
        assert cancels[0]["status"] == 423
        assert len({c["idempotencyKey"] for c in cancels}) == 1


# ---- refund window ----------------------------------------------------------------------------


async def test_a_refund_after_the_refund_window_is_refused_with_vippss_reason(
    database_url: str,
) -> None:
    config = simulator_config(refund_window_seconds=300)
    async with checked_stack(database_url, sim_config=config) as stack:
        await stack.ensure_webhook()
        till, checkout = await sale(stack, 5000)
        await stack.approve(checkout["reference"])
        await stack.wait_state(till, checkout["id"], "CAPTURED")
        stack.simulator.advance_clock(301)
        after = await _post(stack, till, f"{checkout['id']}/refund", {"amount": 1000})
        assert after["state"] == "CAPTURED"
        assert after["refundedAmount"] == 0
        assert "refund period" in after["failure"]["detail"]
