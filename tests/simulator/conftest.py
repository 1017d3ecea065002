"""Fixtures for the simulator tests: an in-process simulator, a webhook receiver, an API helper.

Everything runs in-process through ``httpx.ASGITransport`` on a :class:`ManualClock`, so time
moves only when a test advances it. Webhooks go to :class:`Receiver`, another in-process app.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from app.simulator import ManualClock, Simulator, SimulatorConfig, approved, create_simulator_app
from app.simulator.config import DEFAULT_SALES_UNITS
from app.vipps.signature import verify_webhook

MSN = "123456"
DKK_MSN = "654321"
SUBSCRIPTION_KEY = "sim-subscription-key"
# Each sales unit has its own keys (client_id, client_secret, subscription key), as at Vipps.
KEYS = {
    MSN: ("sim-client-id", "sim-client-secret", SUBSCRIPTION_KEY),
    DKK_MSN: ("sim-client-id-654321", "sim-client-secret-654321", "sim-subscription-key-654321"),
}
PARTNER_KEYS = (
    "sim-partner-client-id",
    "sim-partner-client-secret",
    "sim-partner-subscription-key",
)
HOOK_URL = "https://pos.example.com/vipps/webhooks/123456?tenant=a"
ALL_EVENTS = [
    "user.checked-in.v1",
    "epayments.payment.created.v1",
    "epayments.payment.authorized.v1",
    "epayments.payment.aborted.v1",
    "epayments.payment.expired.v1",
    "epayments.payment.cancelled.v1",
    "epayments.payment.captured.v1",
    "epayments.payment.refunded.v1",
    "epayments.payment.terminated.v1",
]


@dataclass
class Received:
    path_and_query: str
    host: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        import orjson

        return orjson.loads(self.body)


class Receiver:
    """A merchant webhook endpoint: records each POST; answers the queued statuses, then 200."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.statuses: list[int] = []
        self.app = FastAPI()

        @self.app.post("/{path:path}")
        async def hook(path: str, request: Request) -> Response:
            query = request.url.query
            self.received.append(
                Received(
                    "/" + path + (f"?{query}" if query else ""),
                    request.headers["host"],
                    dict(request.headers),
                    await request.body(),
                )
            )
            return Response(status_code=self.statuses.pop(0) if self.statuses else 200)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        bodies = [r.json() for r in self.received]
        return [b for b in bodies if name is None or b.get("name") == name]

    def verify(self, item: Received, secret: str) -> None:
        verify_webhook(
            [secret],
            path_and_query=item.path_and_query,
            host=item.host,
            headers=item.headers,
            body=item.body,
            now=datetime.now(UTC),
            max_age=timedelta(minutes=5),
        )


@dataclass
class Env:
    app: FastAPI
    sim: Simulator
    client: httpx.AsyncClient
    receiver: Receiver
    clock: ManualClock
    token: str = ""
    secrets: dict[str, str] = field(default_factory=dict)
    # Access tokens of the other sales units' keys, by MSN (``token`` is the one of MSN).
    tokens: dict[str, str] = field(default_factory=dict)

    def headers(self, msn: str | None = MSN, **extra: str) -> dict[str, str]:
        """Headers with the keys of ``msn``'s own sales unit (MSN's when ``msn`` is None)."""
        keys = msn if msn in KEYS else MSN
        headers = {
            "Authorization": f"Bearer {self.token if keys == MSN else self.tokens[keys]}",
            "Ocp-Apim-Subscription-Key": KEYS[keys][2],
        }
        if msn is not None:
            headers["Merchant-Serial-Number"] = msn
        headers.update({k.replace("_", "-"): v for k, v in extra.items()})
        return headers

    async def token_for(self, client_id: str, client_secret: str, subscription_key: str) -> str:
        response = await self.client.post(
            "/accesstoken/get",
            headers={
                "client_id": client_id,
                "client_secret": client_secret,
                "Ocp-Apim-Subscription-Key": subscription_key,
            },
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token

    async def fetch_token(self) -> str:
        self.token = await self.token_for(*KEYS[MSN])
        self.tokens[DKK_MSN] = await self.token_for(*KEYS[DKK_MSN])
        return self.token

    async def register(
        self, events: list[str] | None = None, url: str = HOOK_URL, msn: str | None = MSN
    ) -> str:
        response = await self.client.post(
            "/webhooks/v1/webhooks",
            headers=self.headers(msn),
            json={"url": url, "events": events or ALL_EVENTS},
        )
        assert response.status_code == 201, response.text
        body = response.json()
        self.secrets[body["id"]] = body["secret"]
        return str(body["id"])

    async def create(
        self,
        reference: str,
        value: int = 10000,
        *,
        key: str | None = None,
        msn: str = MSN,
        **fields: Any,
    ) -> httpx.Response:
        body: dict[str, Any] = {
            "amount": {"currency": "NOK" if msn == MSN else "DKK", "value": value},
            "paymentMethod": {"type": "WALLET"},
            "customer": {"phoneNumber": "4712345678"},
            "customerInteraction": "CUSTOMER_PRESENT",
            "userFlow": "PUSH_MESSAGE",
            "reference": reference,
            "paymentDescription": "Kasse 1",
        }
        body.update(fields)
        body = {k: v for k, v in body.items() if v is not None}
        return await self.client.post(
            "/epayment/v1/payments",
            headers=self.headers(msn, Idempotency_Key=key or str(uuid.uuid4())),
            json=body,
        )

    async def approve(self, reference: str) -> None:
        response = await self.client.post(f"/_sim/payments/{reference}/approve")
        assert response.status_code == 200, response.text

    async def modify(
        self,
        reference: str,
        action: str,
        value: int | None = None,
        *,
        key: str | None = None,
        body: Any = None,
    ) -> httpx.Response:
        payload = body
        if value is not None:
            payload = {"modificationAmount": {"currency": "NOK", "value": value}}
        extra = {"Idempotency_Key": key or str(uuid.uuid4())}
        return await self.client.post(
            f"/epayment/v1/payments/{reference}/{action}",
            headers=self.headers(**extra),
            json=payload,
        )

    async def authorized(self, reference: str, value: int = 10000) -> None:
        assert (await self.create(reference, value)).status_code == 201
        await self.approve(reference)


def error_code(response: httpx.Response) -> str | None:
    for item in response.json().get("extraDetails") or []:
        if item["name"] == "ErrorCode":
            return str(item["reason"])
    return None


@asynccontextmanager
async def open_env(**overrides: Any) -> AsyncIterator[Env]:
    """A fresh simulator with ``SimulatorConfig(**overrides)`` and fetched access tokens.

    Its sales units are approved for PUSH_MESSAGE and have Login enabled unless ``sales_units``
    is given: most rules are tested on a sales unit set up for this flow; the defaults of a fresh
    one have tests of their own.
    """
    receiver = Receiver()
    clock = ManualClock(datetime.now(UTC).replace(microsecond=123456))
    settings: dict[str, Any] = {
        "sales_units": tuple(approved(unit) for unit in DEFAULT_SALES_UNITS),
        "clock": clock,
        "webhook_transport": httpx.ASGITransport(receiver.app),
        "webhook_retry_delays": (0.005, 0.01, 0.02),
        "fault_seed": 7,
    }
    settings.update(overrides)
    app = create_simulator_app(SimulatorConfig(**settings))
    sim: Simulator = app.state.simulator
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://sim.test"
    ) as client:
        env = Env(app, sim, client, receiver, clock)
        await env.fetch_token()
        try:
            yield env
        finally:
            await sim.aclose()


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with open_env() as opened:
        yield opened
