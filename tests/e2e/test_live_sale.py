"""One sale over real HTTP: service process + simulator + Postgres."""

from __future__ import annotations

import asyncio

import httpx

from tests.support.live import ServiceProcess


async def test_a_sale_over_real_http(
    service: ServiceProcess, admin: httpx.AsyncClient, sim: httpx.AsyncClient
) -> None:
    assert (await admin.post("/api/v1/webhooks/123456/ensure")).status_code == 200
    till = (
        await admin.post(
            "/api/v1/tills",
            json={"tillId": "t1", "storeId": "s1", "locationDescription": "Kasse 1"},
        )
    ).json()
    pos = {"Authorization": f"Bearer {till['apiKey']}"}
    created = await admin.post(
        "/api/v1/tills/t1/checkouts", json={"amount": 5000, "currency": "NOK"}, headers=pos
    )
    assert created.status_code == 201, created.text
    checkout = created.json()
    scan = await sim.post(f"/_sim/qr/{till['merchantQrId']}/scan", json={})
    assert scan.status_code == 200
    for _ in range(100):
        current = (await admin.get(f"/api/v1/checkouts/{checkout['id']}", headers=pos)).json()
        if current["paymentSent"]:
            break
        await asyncio.sleep(0.05)
    assert (
        await sim.post(f"/_sim/payments/{current['reference']}/approve", json={})
    ).status_code == 200
    for _ in range(200):
        current = (
            await admin.get(
                f"/api/v1/checkouts/{checkout['id']}",
                params={"wait": 2, "version": current["version"]},
                headers=pos,
            )
        ).json()
        if current["state"] == "CAPTURED":
            break
    assert current["state"] == "CAPTURED"
    assert (await sim.get("/_sim/violations")).json()["violations"] == []
