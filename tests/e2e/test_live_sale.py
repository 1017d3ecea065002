"""One sale over real HTTP: service process + simulator + Postgres."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from app.observability.pii import find_pii
from tests.e2e.helpers import LiveTill, effective_calls
from tests.support.live import ADMIN_KEY, ServiceProcess

pytestmark = pytest.mark.e2e

RECEIPT = {
    "orderLines": [
        {
            "name": "socks",
            "id": "line_item_1",
            "totalAmount": 10000,
            "totalAmountExcludingTax": 8000,
            "totalTaxAmount": 2000,
            "taxRate": 2500,
            "unitInfo": {"unitPrice": 5000, "quantity": "2", "quantityUnit": "PCS"},
        }
    ],
    "bottomLine": {"currency": "NOK", "receiptNumber": "0527013501"},
}


async def read_events(
    response: httpx.Response, into: list[dict[str, Any]], until: str, started: asyncio.Event
) -> None:
    """Collect SSE ``data`` payloads until one caused by the event ``until``; ``started`` is set
    once the stream's snapshot has arrived (later changes are then streamed, not snapshotted)."""
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            payload = json.loads(line.removeprefix("data:"))
            into.append(payload)
            started.set()
            if payload["data"].get("event") == until:
                return


async def test_a_sale_over_real_http(
    service: ServiceProcess, admin: httpx.AsyncClient, sim: httpx.AsyncClient
) -> None:
    assert (await admin.post("/api/v1/webhooks/123456/ensure")).status_code == 200
    till = await LiveTill.register(admin, sim, "t1", service.url)
    try:
        qr = await till.pos.get("/api/v1/tills/t1/qr", params={"format": "png"})
        assert qr.status_code == 200
        assert qr.content.startswith(b"\x89PNG")

        events: list[dict[str, Any]] = []
        async with till.pos.stream("GET", "/api/v1/tills/t1/events") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            started = asyncio.Event()
            reader = asyncio.create_task(read_events(stream, events, "CAPTURE_SUCCEEDED", started))
            await asyncio.wait_for(started.wait(), 10)
            checkout = await till.checkout(10000, description="Socks", receipt=RECEIPT)
            assert checkout["state"] == "AWAITING_SCAN"
            scan = await till.scan(phone="4798765432")
            sent = await till.wait_for(checkout["id"], lambda c: c["paymentSent"])
            assert sent["state"] == "PAYMENT_REQUESTED"
            payment = (await sim.get(f"/_sim/payments/{sent['reference']}")).json()
            assert payment["amount"] == {"currency": "NOK", "value": 10000}
            await till.approve(sent["reference"])
            done = await till.wait_state(checkout["id"], "CAPTURED")
            await asyncio.wait_for(reader, 15)
        assert done["capturedAmount"] == 10000
        assert events[0]["kind"] == "snapshot"
        assert [e["data"].get("event") for e in events[1:]] == [
            None,  # checkout.created
            "CUSTOMER_SCANNED",
            "PAYMENT_CREATED",
            "VIPPS_AUTHORIZED",
            "CAPTURE_SUCCEEDED",
        ]

        refund = await till.pos.post(
            f"/api/v1/checkouts/{checkout['id']}/refund",
            json={"amount": 2500},
            headers={"Idempotency-Key": "refund-t1-1"},
        )
        assert refund.status_code == 200, refund.text
        assert refund.json()["state"] == "PARTIALLY_REFUNDED"
        assert await effective_calls(sim, sent["reference"]) == {
            "createPayment": 1,
            "userApprove": 1,
            "capturePayment": 1,
            "refundPayment": 1,
        }
        # Neither the customer's phone number nor any token or secret reached the logs.
        webhook_secrets = [
            r["secret"] for r in (await sim.get("/_sim/webhooks")).json()["registrations"]
        ]
        log = service.log_path.read_text()
        assert "checkout.transition" in log
        known = [scan["customerToken"], till.till["apiKey"], ADMIN_KEY, *webhook_secrets]
        assert find_pii(log, known_secrets=known) == []
    finally:
        await till.aclose()
