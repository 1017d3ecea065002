"""One sale through the whole service, in-process, on both databases."""

from __future__ import annotations

from tests.support.stack import in_process_stack


async def test_basket_then_scan_is_paid_and_captured(database_url: str) -> None:
    async with in_process_stack(database_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till()
        checkout = await stack.checkout(till, 12900, description="Kjøp Kasse 1")
        assert checkout["state"] == "AWAITING_SCAN"
        await stack.scan(till)
        requested = await stack.wait_for(till, checkout["id"], lambda c: c["paymentSent"])
        assert requested["state"] == "PAYMENT_REQUESTED"
        await stack.approve(requested["reference"])
        done = await stack.wait_state(till, checkout["id"], "CAPTURED")
        assert done["capturedAmount"] == 12900
        assert done["authorizedAmount"] == 12900
        violations = (await stack.sim.get("/_sim/violations")).json()
        assert violations["violations"] == [], violations
