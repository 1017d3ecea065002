"""Creating a checkout: validation before anything reaches Vipps, idempotency, one per till."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.api.support import (
    VIPPS_EXAMPLE_RECEIPT,
    assert_problem,
    checked_stack,
    count_rows,
    ledger,
)

BAD_RECEIPT: dict[str, Any] = {
    "orderLines": [
        {
            "name": "socks",
            "id": "line_item_1",
            # 8000 + 2000 ≠ 9000: certainly wrong.
            "totalAmount": 9000,
            "totalAmountExcludingTax": 8000,
            "totalTaxAmount": 2000,
            "taxRate": 2500,
        },
        {
            "name": "",
            "id": "line_item_2",
            "totalAmount": 1000,
            "totalAmountExcludingTax": 800,
            "totalTaxAmount": 200,
            "taxRate": 2500,
        },
    ],
    "bottomLine": {"currency": "NOK"},
}


async def test_a_bad_receipt_is_refused_naming_each_field(sqlite_url: str) -> None:
    async with checked_stack(sqlite_url) as stack:
        till = await stack.register_till()
        response = await stack.service.post(
            "/api/v1/tills/till-1/checkouts",
            json={"amount": 12000, "currency": "NOK", "receipt": BAD_RECEIPT},
            headers=stack.till_headers(till),
        )
        body = assert_problem(response, 422, "validation_error")
        problems = {(e["field"], e["code"]) for e in body["errors"]}
        fields = {field for field, _ in problems}
        assert "receipt.orderLines[0].totalAmount" in fields, problems
        assert "receipt.orderLines[1].name" in fields, problems
        # The lines (9000 + 1000) do not add up to the amount (12000).
        assert any(field.startswith("amount") or field == "receipt" for field in fields), problems
        assert all(e["message"] for e in body["errors"])
        assert await count_rows(stack, "checkouts") == 0

        schema = await stack.service.post(
            "/api/v1/tills/till-1/checkouts",
            json={"amount": "lots", "currency": "SEK", "captureMode": "LATER"},
            headers=stack.till_headers(till),
        )
        body = assert_problem(schema, 422, "validation_error")
        assert {e["field"] for e in body["errors"]} == {"amount", "currency", "captureMode"}

        short = await stack.service.post(
            "/api/v1/tills/till-1/checkouts",
            json={"amount": 1000, "currency": "NOK", "description": "ab"},
            headers=stack.till_headers(till),
        )
        body = assert_problem(short, 422, "validation_error")
        assert [e["field"] for e in body["errors"]] == ["description"]
        assert await ledger(stack, operation="createPayment") == []


async def test_the_vipps_example_receipt_is_accepted_with_warnings(database_url: str) -> None:
    async with checked_stack(database_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till()
        checkout = await stack.checkout(
            till, 10000, description="Purchase of socks", receipt=VIPPS_EXAMPLE_RECEIPT
        )
        assert checkout["state"] == "AWAITING_SCAN"
        warned = {(w["field"], w["code"]) for w in checkout["warnings"]}
        assert warned == {
            ("receipt.orderLines[0].unitInfo.unitPrice", "unit_price_mismatch"),
            ("receipt.orderLines[0].totalTaxAmount", "tax_rate_mismatch"),
        }
        assert checkout["receipt"]["orderLines"] == VIPPS_EXAMPLE_RECEIPT["orderLines"]
        # ... and it goes to Vipps as is, where the spec check accepts it.
        await stack.scan(till)
        sent = await stack.wait_for(till, checkout["id"], lambda c: c["paymentSent"])
        payment = (await stack.sim.get(f"/_sim/payments/{sent['reference']}")).json()
        assert payment["state"] == "CREATED"
        assert (await stack.sim.get("/_sim/violations")).json()["violations"] == []


async def test_idempotency_key_replays_the_same_checkout_and_refuses_another_body(
    database_url: str,
) -> None:
    async with checked_stack(database_url) as stack:
        till = await stack.register_till()
        headers = {**stack.till_headers(till), "Idempotency-Key": "sale-0042"}
        body = {"amount": 4900, "currency": "NOK", "description": "Kjøp"}
        first = await stack.service.post(
            "/api/v1/tills/till-1/checkouts", json=body, headers=headers
        )
        assert first.status_code == 201
        assert "Idempotent-Replayed" not in first.headers
        again = await stack.service.post(
            "/api/v1/tills/till-1/checkouts", json=body, headers=headers
        )
        assert again.status_code == 201
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["Location"] == f"/api/v1/checkouts/{first.json()['id']}"

        other = await stack.service.post(
            "/api/v1/tills/till-1/checkouts", json={**body, "amount": 5000}, headers=headers
        )
        assert_problem(other, 409, "idempotency_key_reused")
        assert await count_rows(stack, "checkouts") == 1


async def test_concurrent_retries_with_one_key_make_one_checkout(database_url: str) -> None:
    async with checked_stack(database_url) as stack:
        till = await stack.register_till()
        headers = {**stack.till_headers(till), "Idempotency-Key": "sale-0043"}
        body = {"amount": 4900, "currency": "NOK"}
        responses = await asyncio.gather(
            *(
                stack.service.post("/api/v1/tills/till-1/checkouts", json=body, headers=headers)
                for _ in range(5)
            )
        )
        assert {r.status_code for r in responses} == {201}, [r.text for r in responses]
        assert len({r.json()["id"] for r in responses}) == 1
        assert sum(1 for r in responses if "Idempotent-Replayed" not in r.headers) == 1
        assert await count_rows(stack, "checkouts") == 1


async def test_a_second_checkout_on_a_busy_till_names_the_active_one(database_url: str) -> None:
    async with checked_stack(database_url) as stack:
        till = await stack.register_till()
        active = await stack.checkout(till, 2000)
        second = await stack.service.post(
            "/api/v1/tills/till-1/checkouts",
            json={"amount": 3000, "currency": "NOK"},
            headers=stack.till_headers(till),
        )
        body = assert_problem(second, 409, "active_checkout_exists")
        assert body["activeCheckoutId"] == active["id"]
        assert body["activeCheckoutState"] == "AWAITING_SCAN"

        # Concurrent attempts: exactly one wins (the partial unique index backs the lock).
        other = await stack.register_till("till-2")
        results = await asyncio.gather(
            *(
                stack.service.post(
                    "/api/v1/tills/till-2/checkouts",
                    json={"amount": 1000 + i, "currency": "NOK"},
                    headers=stack.till_headers(other),
                )
                for i in range(4)
            )
        )
        assert sorted(r.status_code for r in results) == [201, 409, 409, 409]
        winner = next(r.json()["id"] for r in results if r.status_code == 201)
        for loser in (r for r in results if r.status_code == 409):
            assert loser.json()["activeCheckoutId"] == winner

        # Once the first ends, the till is free again.
        cancelled = await stack.service.post(
            f"/api/v1/checkouts/{active['id']}/cancel", headers=stack.till_headers(till)
        )
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"] == "CANCELLED"
        await stack.checkout(till, 3000)
