"""A till and a customer over real HTTP, for end-to-end tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class LiveTill:
    """One registered till talking to one replica (``pos``) of the service."""

    pos: httpx.AsyncClient
    sim: httpx.AsyncClient
    till: dict[str, Any]

    @classmethod
    async def register(
        cls, admin: httpx.AsyncClient, sim: httpx.AsyncClient, till_id: str, pos_url: str
    ) -> LiveTill:
        response = await admin.post(
            "/api/v1/tills",
            json={"tillId": till_id, "storeId": "s1", "locationDescription": f"Kasse {till_id}"},
        )
        assert response.status_code == 201, response.text
        till = response.json()
        pos = httpx.AsyncClient(
            base_url=pos_url, headers={"Authorization": f"Bearer {till['apiKey']}"}, timeout=30
        )
        return cls(pos, sim, till)

    async def aclose(self) -> None:
        await self.pos.aclose()

    @property
    def id(self) -> str:
        till_id: str = self.till["tillId"]
        return till_id

    async def checkout(self, amount: int, **body: Any) -> dict[str, Any]:
        response = await self.pos.post(
            f"/api/v1/tills/{self.id}/checkouts",
            json={"amount": amount, "currency": "NOK", **body},
        )
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def scan(self, phone: str | None = None) -> dict[str, Any]:
        """The customer scans the till's QR; returns what the simulator issued (the token)."""
        body = {"phoneNumber": phone} if phone else {}
        response = await self.sim.post(f"/_sim/qr/{self.till['merchantQrId']}/scan", json=body)
        assert response.status_code == 200, response.text
        issued: dict[str, Any] = response.json()
        return issued

    async def get(self, checkout_id: str, **params: Any) -> dict[str, Any]:
        response = await self.pos.get(f"/api/v1/checkouts/{checkout_id}", params=params)
        assert response.status_code == 200, response.text
        current: dict[str, Any] = response.json()
        return current

    async def wait_for(
        self,
        checkout_id: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 15.0,
    ) -> dict[str, Any]:
        """Long-poll (``?wait``) until ``predicate`` holds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        current = await self.get(checkout_id)
        while not predicate(current):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out in {current['state']}: {current}")
            current = await self.get(
                checkout_id, wait=round(min(remaining, 5.0), 2), version=current["version"]
            )
        return current

    async def wait_state(self, checkout_id: str, *states: str) -> dict[str, Any]:
        return await self.wait_for(checkout_id, lambda c: c["state"] in states)

    async def approve(self, reference: str) -> None:
        response = await self.sim.post(f"/_sim/payments/{reference}/approve", json={})
        assert response.status_code == 200, response.text


async def effective_calls(sim: httpx.AsyncClient, reference: str) -> dict[str, int]:
    """How many calls took effect at Vipps per operation, for one payment reference."""
    counts: dict[str, int] = {}
    for entry in (await sim.get("/_sim/ledger", params={"reference": reference})).json():
        if entry["effect"] and not entry["replay"]:
            counts[entry["operation"]] = counts.get(entry["operation"], 0) + 1
    return counts
