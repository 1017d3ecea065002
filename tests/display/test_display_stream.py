"""The display's event stream over real HTTP: a customer-safe projection, resumable, bounded by
its token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from app.devstack import BackgroundServer, free_port
from app.main import create_app
from app.service import Services
from app.service.context import utcnow
from tests.support.live import live_simulator
from tests.support.stack import ADMIN_KEY, service_settings

SOCKS_RECEIPT = {
    "orderLines": [
        {
            "name": "socks",
            "id": "line-1",
            "totalAmount": 10000,
            "totalAmountExcludingTax": 8000,
            "totalTaxAmount": 2000,
            "taxRate": 2500,
            "unitInfo": {"unitPrice": 5000, "quantity": "2", "quantityUnit": "PCS"},
        }
    ],
    "bottomLine": {"currency": "NOK", "receiptNumber": "0527013501"},
}


@dataclass
class LiveService:
    app: FastAPI
    client: httpx.AsyncClient

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services


@pytest.fixture
def simulator() -> Iterator[BackgroundServer]:
    with live_simulator() as server:
        yield server


@pytest.fixture
async def live(sqlite_url: str, simulator: BackgroundServer) -> AsyncIterator[LiveService]:
    port = free_port()
    settings = service_settings(
        sqlite_url,
        vipps={"base_url": simulator.url},
        webhooks={"public_url": f"http://127.0.0.1:{port}/webhooks/vipps"},
    )
    app = create_app(settings)
    server = BackgroundServer(app, port=port).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            yield LiveService(app, client)
    finally:
        server.stop()


async def events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Parse an SSE body into {"id", "data"} messages (comments and retry hints skipped)."""
    message: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in message:
                yield message
            message = {}
        elif line.startswith("id: "):
            message["id"] = int(line[4:])
        elif line.startswith("data: "):
            message["data"] = orjson.loads(line[6:])


async def next_event(stream: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    return await asyncio.wait_for(anext(stream), timeout=10)


async def setup_till(live: LiveService) -> tuple[dict[str, Any], dict[str, str]]:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    registered = await live.client.post(
        "/api/v1/tills",
        json={"tillId": "t1", "storeId": "s1", "locationDescription": "Kasse 1"},
        headers=admin,
    )
    assert registered.status_code == 201, registered.text
    till = registered.json()
    pos = {"Authorization": f"Bearer {till['apiKey']}"}
    token = (await live.client.post("/api/v1/tills/t1/display-token", headers=pos)).json()["token"]
    session = await live.client.post(
        "/tills/t1/display/session", headers={"Authorization": f"Bearer {token}"}
    )
    assert session.status_code == 200, session.text
    return till, pos


async def test_the_stream_shows_the_sale_without_internals_and_resumes_after_last_event_id(
    live: LiveService,
) -> None:
    _, pos = await setup_till(live)
    async with live.client.stream("GET", "/tills/t1/display/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = events(response)
        snapshot = await next_event(stream)
        assert snapshot["data"]["kind"] == "snapshot"
        assert snapshot["data"]["view"] is None
        created = await live.client.post(
            "/api/v1/tills/t1/checkouts",
            json={"amount": 10000, "currency": "NOK", "receipt": SOCKS_RECEIPT},
            headers=pos,
        )
        assert created.status_code == 201, created.text
        checkout = created.json()
        message = await next_event(stream)
    assert message["id"] > snapshot["id"]
    view = message["data"]["view"]
    assert message["data"]["kind"] == "checkout.created"
    assert view["status"] == "scan"
    assert view["amount"] == {"value": 10000, "currency": "NOK"}
    assert view["lines"] == [{"name": "socks", "quantity": "2", "unit": "PCS", "total": 10000}]
    assert set(view) == {
        "checkoutId",
        "state",
        "status",
        "final",
        "amount",
        "description",
        "lines",
        "tip",
        "holdSeconds",
    }
    assert checkout["reference"] not in orjson.dumps(message).decode()

    cancelled = await live.client.post(f"/api/v1/checkouts/{checkout['id']}/cancel", headers=pos)
    assert cancelled.json()["state"] == "CANCELLED"

    # What a reconnecting EventSource sends: everything after the last id it saw, no snapshot.
    resumed_headers = {"Last-Event-ID": str(snapshot["id"])}
    async with live.client.stream(
        "GET", "/tills/t1/display/events", headers=resumed_headers
    ) as response:
        stream = events(response)
        replayed = [await next_event(stream), await next_event(stream)]
    assert [m["data"]["kind"] for m in replayed] == ["checkout.created", "checkout.updated"]
    assert replayed[0]["id"] == message["id"]
    last = replayed[1]["data"]["view"]
    assert (last["status"], last["final"]) == ("cancelled", True)
    assert 0 < last["holdSeconds"] <= 30

    # A page that had to build a new EventSource resumes with ?lastEventId= instead.
    async with live.client.stream(
        "GET", "/tills/t1/display/events", params={"lastEventId": message["id"]}
    ) as response:
        only = await next_event(events(response))
    assert only["id"] == replayed[1]["id"]

    # A fresh page (no id) sees the sale that just ended, so a reload keeps showing the result.
    async with live.client.stream("GET", "/tills/t1/display/events") as response:
        fresh = await next_event(events(response))
    assert fresh["data"]["kind"] == "snapshot"
    assert fresh["data"]["view"]["status"] == "cancelled"


async def test_a_stream_ends_once_its_token_has_expired(live: LiveService) -> None:
    _, pos = await setup_till(live)
    async with live.client.stream("GET", "/tills/t1/display/events") as response:
        stream = events(response)
        await next_event(stream)
        ctx = live.services.ctx
        ctx.clock = lambda: utcnow() + timedelta(hours=1)
        try:
            created = await live.client.post(
                "/api/v1/tills/t1/checkouts", json={"amount": 5000}, headers=pos
            )
            assert created.status_code == 201
            with pytest.raises(StopAsyncIteration):
                await next_event(stream)
        finally:
            ctx.clock = utcnow
    live.client.cookies.clear()
    assert (await live.client.get("/tills/t1/display/events")).status_code == 401
