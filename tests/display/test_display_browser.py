"""The till display in headless Chromium: sales driven through the POS API and the simulator
change what the customer sees, and the page keeps telling the truth across a service restart and
a reload. The paid screen is kept as test-artifacts/display-paid.png."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from app.devstack import BackgroundServer
from tests.support.live import ADMIN_KEY, ServiceProcess

pytestmark = pytest.mark.e2e

STEP_TIMEOUT_MS = 20_000
RECEIPT = {
    "orderLines": [
        {
            "name": "Wool socks",
            "id": "line-1",
            "totalAmount": 10000,
            "totalAmountExcludingTax": 8000,
            "totalTaxAmount": 2000,
            "taxRate": 2500,
            "unitInfo": {"unitPrice": 5000, "quantity": "2", "quantityUnit": "PCS"},
        },
        {
            "name": "Shopping bag",
            "id": "line-2",
            "totalAmount": 500,
            "totalAmountExcludingTax": 400,
            "totalTaxAmount": 100,
            "taxRate": 2500,
        },
    ],
    "bottomLine": {"currency": "NOK", "receiptNumber": "0527013501"},
}


class Till:
    """The cash register and the customer's phone, as the test drives them."""

    def __init__(
        self, http: httpx.AsyncClient, service: ServiceProcess, sim_url: str, till: dict[str, Any]
    ) -> None:
        self.http = http
        self.service = service
        self.sim_url = sim_url
        self.id: str = till["tillId"]
        self.qr_id: str = till["merchantQrId"]
        self.pos = {"Authorization": f"Bearer {till['apiKey']}"}

    async def ring_up(self, amount: int, **body: Any) -> dict[str, Any]:
        response = await self.http.post(
            f"{self.service.url}/api/v1/tills/{self.id}/checkouts",
            json={"amount": amount, "currency": "NOK", **body},
            headers=self.pos,
        )
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    async def checkout(self, checkout_id: str) -> dict[str, Any]:
        response = await self.http.get(
            f"{self.service.url}/api/v1/checkouts/{checkout_id}", headers=self.pos
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def cancel(self, checkout_id: str) -> dict[str, Any]:
        response = await self.http.post(
            f"{self.service.url}/api/v1/checkouts/{checkout_id}/cancel", headers=self.pos
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def customer(self, action: str, path: str = "") -> None:
        target = path or f"/_sim/qr/{self.qr_id}/scan"
        response = await self.http.post(f"{self.sim_url}{target}", json={})
        assert response.status_code == 200, f"{action}: {response.text}"

    async def scan(self) -> None:
        await self.customer("scan")

    async def answer(self, reference: str, action: str) -> None:
        await self.customer(action, f"/_sim/payments/{reference}/{action}")


async def open_till(
    http: httpx.AsyncClient, service: ServiceProcess, simulator: BackgroundServer
) -> Till:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    ensured = await http.post(f"{service.url}/api/v1/webhooks/123456/ensure", headers=admin)
    assert ensured.status_code == 200, ensured.text
    registered = await http.post(
        f"{service.url}/api/v1/tills",
        json={"tillId": "oslo-1-till-3", "storeId": "oslo-1", "locationDescription": "Kasse 3"},
        headers=admin,
    )
    assert registered.status_code == 201, registered.text
    return Till(http, service, simulator.url, registered.json())


async def shows(page: Page, status: str, headline: str) -> None:
    await expect(page.locator("body")).to_have_attribute(
        "data-status", status, timeout=STEP_TIMEOUT_MS
    )
    await expect(page.locator("#headline")).to_have_text(headline)


def stream_openings(service: ServiceProcess) -> list[dict[str, Any]]:
    lines = service.log_path.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    return [r for r in records if r.get("event") == "display.stream.opened"]


async def test_the_display_follows_sales_across_a_restart_and_a_reload(
    browser: Browser,
    service: ServiceProcess,
    simulator: BackgroundServer,
    http: httpx.AsyncClient,
    artifacts: Path,
) -> None:
    till = await open_till(http, service, simulator)
    issued = await http.post(
        f"{service.url}/api/v1/tills/{till.id}/display-token", headers=till.pos
    )
    assert issued.status_code == 201, issued.text
    display_url = service.url + issued.json()["displayUrl"]

    page = await browser.new_page(viewport={"width": 1024, "height": 640}, locale="en-GB")
    await page.goto(display_url)
    await shows(page, "idle", "Scan to pay")
    await expect(page.locator("#location")).to_have_text("Kasse 3")
    await expect(page.locator("body")).to_have_attribute("data-connection", "live")
    assert "#token=" not in page.url, "the token must leave the address bar"
    qr_width = await page.locator("#qr").evaluate("img => img.complete && img.naturalWidth")
    assert qr_width > 0, "the till's QR did not load"

    # Basket first: the sale is on screen with its lines; the customer scans and gets the push.
    sale = await till.ring_up(10500, description="Kasse 3", receipt=RECEIPT)
    await shows(page, "scan", "Scan to pay")
    await expect(page.locator("#amount")).to_have_text("NOK 105.00")
    await expect(page.locator("#lines li")).to_have_count(2)
    await expect(page.locator("#lines li").first).to_contain_text("2 ×Wool socks")
    await expect(page.locator("#lines li").first).to_contain_text("NOK 100.00")
    await expect(page.locator("#qr-box")).to_be_visible()
    await till.scan()
    await shows(page, "approve", "Approve in the app")
    await expect(page.locator("#qr-box")).to_be_hidden()

    # The service dies while the customer approves; the page must catch up after the restart.
    reference = sale["reference"]
    service.kill()
    await expect(page.locator("body")).to_have_attribute(
        "data-connection", "reconnecting", timeout=STEP_TIMEOUT_MS
    )
    await till.answer(reference, "approve")
    await asyncio.to_thread(service.start)
    await shows(page, "paid", "Paid")
    await expect(page.locator("body")).to_have_attribute("data-connection", "live")
    await expect(page.locator("#amount")).to_have_text("NOK 105.00")
    assert (await till.checkout(sale["id"]))["state"] == "CAPTURED"
    # The browser resumed the stream by itself with Last-Event-ID: no second snapshot.
    assert await page.locator("body").get_attribute("data-snapshots") == "1"
    assert int(await page.locator("body").get_attribute("data-connections") or 0) >= 2
    resumed = [o for o in stream_openings(service) if o.get("resume_source") == "last-event-id"]
    assert resumed, "the reconnect did not carry Last-Event-ID"
    await page.screenshot(path=artifacts / "display-paid.png")

    # A reload starts from a snapshot, which still shows the sale that just ended.
    await page.reload()
    await shows(page, "paid", "Paid")
    await expect(page.locator("#amount")).to_have_text("NOK 105.00")

    # The customer declines the next sale.
    declined = await till.ring_up(2500, description="Kasse 3")
    await shows(page, "scan", "Scan to pay")
    await expect(page.locator("#amount")).to_have_text("NOK 25.00")
    await expect(page.locator("#receipt")).to_be_hidden()
    await till.scan()
    await shows(page, "approve", "Approve in the app")
    await till.answer(declined["reference"], "decline")
    await shows(page, "declined", "Declined")

    # Scan first, basket second: the check-in waits for the sale, which goes straight to the app.
    await till.scan()
    await shows(page, "waiting", "Scanned")
    await till.ring_up(4900, description="Kasse 3")
    await shows(page, "approve", "Approve in the app")
    await expect(page.locator("#amount")).to_have_text("NOK 49.00")
    active = (
        await http.get(f"{service.url}/api/v1/tills/{till.id}/checkouts/active", headers=till.pos)
    ).json()["checkout"]
    assert (await till.cancel(active["id"]))["state"] == "CANCELLED"
    await shows(page, "cancelled", "Cancelled")
    await page.close()
