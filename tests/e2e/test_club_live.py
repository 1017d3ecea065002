"""Customer club over real HTTP: the service as an OS process on Postgres, the simulator in a
thread. One enrollment with a member price, then the same customer recognised as a member; the
service's log file must not carry a phone number or a customer token."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.devstack import BackgroundServer
from app.observability.pii import find_pii
from tests.support.live import ADMIN_KEY, ServiceProcess, live_simulator, live_simulator_config
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

KARI = "4798765432"
MEMBER_RECEIPT = {
    "orderLines": [
        {
            "name": "coffee",
            "id": "line-1",
            "totalAmount": 4000,
            "totalAmountExcludingTax": 3200,
            "totalTaxAmount": 800,
            "taxRate": 2500,
        }
    ],
    "bottomLine": {"currency": "NOK", "receiptNumber": "club-1"},
}


@pytest.fixture
def club_simulator() -> Iterator[BackgroundServer]:
    with live_simulator(live_simulator_config(ciba_interval_seconds=1)) as server:
        yield server


@pytest.fixture
def club_service(
    pg_url: str, club_simulator: BackgroundServer, tmp_path: Path
) -> Iterator[ServiceProcess]:
    process = ServiceProcess(pg_url, club_simulator.url, tmp_path / "logs", name="club").start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def http(
    club_service: ServiceProcess, club_simulator: BackgroundServer
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    async with (
        httpx.AsyncClient(
            base_url=club_service.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
        ) as admin,
        httpx.AsyncClient(base_url=club_simulator.url, timeout=30) as sim,
    ):
        yield admin, sim


async def _wait(
    admin: httpx.AsyncClient, checkout_id: str, headers: dict[str, str], predicate: Any
) -> dict[str, Any]:
    current: dict[str, Any] = (
        await admin.get(f"/api/v1/checkouts/{checkout_id}", headers=headers)
    ).json()
    for _ in range(60):
        if predicate(current):
            return current
        current = (
            await admin.get(
                f"/api/v1/checkouts/{checkout_id}",
                params={"wait": 1, "version": current["version"]},
                headers=headers,
            )
        ).json()
    raise AssertionError(f"timed out; last seen {current}")


async def test_enrollment_and_member_price_over_real_http(
    http: tuple[httpx.AsyncClient, httpx.AsyncClient], club_service: ServiceProcess
) -> None:
    admin, sim = http
    assert (await admin.post("/api/v1/webhooks/123456/ensure")).status_code == 200
    store = {"clubPolicy": "enroll", "memberPriceHold": True, "memberPriceHoldSeconds": 30}
    assert (await admin.put("/api/v1/stores/cafe", json=store)).status_code == 200
    till = (
        await admin.post(
            "/api/v1/tills",
            json={"tillId": "cafe-1", "storeId": "cafe", "locationDescription": "Kasse 1"},
        )
    ).json()
    pos = {"Authorization": f"Bearer {till['apiKey']}"}
    tokens: list[str] = []

    async def sale() -> str:
        created = await admin.post(
            "/api/v1/tills/cafe-1/checkouts", json={"amount": 5000, "currency": "NOK"}, headers=pos
        )
        assert created.status_code == 201, created.text
        scan = await sim.post(f"/_sim/qr/{till['merchantQrId']}/scan", json={"phoneNumber": KARI})
        tokens.append(scan.json()["customerToken"])
        checkout_id: str = created.json()["id"]
        return checkout_id

    first = await sale()
    await _wait(admin, first, pos, lambda c: (c["member"] or {}).get("outcome") == "enrolling")
    logins = [x for x in (await sim.get("/_sim/logins")).json() if x["status"] == "pending"]
    assert len(logins) == 1
    await sim.post(f"/_sim/logins/{logins[0]['authReqId']}/consent")
    held = await _wait(admin, first, pos, lambda c: c["state"] == "AWAITING_POS_UPDATE")
    assert held["member"]["outcome"] == "enrolled"

    updated = await admin.post(
        f"/api/v1/checkouts/{first}/member-price",
        json={"amount": 4000, "receipt": MEMBER_RECEIPT},
        headers=pos,
    )
    assert updated.status_code == 200, updated.text
    sent = await _wait(admin, first, pos, lambda c: c["paymentSent"])
    assert (
        await sim.post(f"/_sim/payments/{sent['reference']}/approve", json={})
    ).status_code == 200
    paid = await _wait(admin, first, pos, lambda c: c["state"] == "CAPTURED")
    assert paid["capturedAmount"] == 4000

    second = await sale()
    recognised = await _wait(admin, second, pos, lambda c: c["state"] == "AWAITING_POS_UPDATE")
    assert recognised["member"]["outcome"] == "member"
    assert recognised["member"]["id"] == paid["member"]["id"]
    # No member price this time: the original amount goes out when the hold ends.
    await admin.post(f"/api/v1/checkouts/{second}/cancel", headers=pos)

    violations = (await sim.get("/_sim/violations")).json()["violations"]
    assert violations == [], json.dumps(violations)

    # The cancel is the last thing the service did: once it is logged, so is all before it.
    def cancel_logged() -> bool:
        return any(
            second in line and '"trigger": "CANCEL_REQUESTED"' in line
            for line in club_service.log_path.read_text().splitlines()
        )

    await eventually(cancel_logged, "the cancel to reach the log")
    logged = club_service.log_path.read_text()
    assert "club.enrollment.started" in logged
    assert find_pii(logged, known_secrets=tokens) == []
