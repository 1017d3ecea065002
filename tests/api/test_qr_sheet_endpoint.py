"""GET /api/v1/stores/{storeId}/qr-sheet: the CLI's QR sheet over HTTP, for operators."""

from __future__ import annotations

import io

from pypdf import PdfReader

from tests.api.support import assert_problem, checked_stack
from tests.support.stack import Stack


async def _register(stack: Stack, till_id: str, location: str) -> dict[str, str]:
    response = await stack.service.post(
        "/api/v1/tills",
        json={"tillId": till_id, "storeId": "abo", "locationDescription": location},
        headers=stack.admin,
    )
    assert response.status_code == 201, response.text
    body: dict[str, str] = response.json()
    return body


async def test_the_store_sheet_over_http_names_missing_tills(sqlite_url: str) -> None:
    async with checked_stack(sqlite_url) as stack:
        await _register(stack, "kasse-1", "Kassa 2 – Åbo ØÆÅ ÄÖ")
        # Vipps fails to create kasse-2's QR: the till is saved without QR content.
        rule = {"kind": "error", "status": 503, "operation": "PutMerchantCallbackQr", "times": 10}
        assert (await stack.sim.post("/_sim/faults", json=rule)).status_code in (200, 201)
        assert (await _register(stack, "kasse-2", "Kasse 2"))["qrStatus"] == "FAILED"

        partial = await stack.service.get("/api/v1/stores/abo/qr-sheet", headers=stack.admin)
        assert partial.status_code == 200, partial.text
        assert partial.headers["content-type"] == "application/pdf"
        assert partial.headers["X-Missing-Tills"] == "kasse-2"
        text = PdfReader(io.BytesIO(partial.content)).pages[0].extract_text()
        assert "Kassa 2 – Åbo ØÆÅ ÄÖ" in text
        assert text.count("Scan with Vipps / MobilePay") == 1

        assert (await stack.sim.delete("/_sim/faults")).status_code in (200, 204)
        fixed = await stack.service.patch(
            "/api/v1/tills/kasse-2", json={"locationDescription": "Kasse 2"}, headers=stack.admin
        )
        assert fixed.json()["qrStatus"] == "SYNCED"
        whole = await stack.service.get(
            "/api/v1/stores/abo/qr-sheet", params={"format": "svg"}, headers=stack.admin
        )
        assert whole.status_code == 200, whole.text
        assert whole.headers["content-type"].startswith("image/svg+xml")
        assert "X-Missing-Tills" not in whole.headers
        assert whole.text.count("Scan with Vipps / MobilePay") == 2

        none = await stack.service.get("/api/v1/stores/nowhere/qr-sheet", headers=stack.admin)
        assert_problem(none, 404, "not_found")
        till_key = await stack.service.get(
            "/api/v1/stores/abo/qr-sheet",
            headers={"Authorization": f"Bearer {(await _register(stack, 'k3', 'K3'))['apiKey']}"},
        )
        assert_problem(till_key, 403, "forbidden")
