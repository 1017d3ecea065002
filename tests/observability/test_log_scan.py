"""Every log line of an end-to-end run is JSON with an event name, and none carries personal data
or a secret.

The service runs as a real process (its whole stdout/stderr goes to one file) against the
simulator over HTTP. The run covers both scan orders, a customer-club store, a decline, a refund,
a forged webhook, the till display and a rejected API key, so each code path that sees a phone
number, a customer token or a credential writes its lines.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.devstack import BackgroundServer
from app.observability.pii import find_pii
from app.simulator import Simulator, create_simulator_app
from tests.support.live import ADMIN_KEY, ServiceProcess, live_simulator_config
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

DOTTED = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+")
PHONES = ("4712345678", "4798765432")
SIM_SECRETS = ("sim-client-secret", "sim-subscription-key")


@pytest.fixture
def simulator_app() -> Any:
    return create_simulator_app(live_simulator_config())


@pytest.fixture
def simulator(simulator_app: Any) -> Iterator[BackgroundServer]:
    server = BackgroundServer(simulator_app).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def service(pg_url: str, simulator: BackgroundServer, tmp_path: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(pg_url, simulator.url, tmp_path / "logs", name="log-scan").start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


class Run:
    """Drives the run and remembers every secret it saw on the way."""

    def __init__(self, http: httpx.AsyncClient, service: str, sim: str) -> None:
        self.http, self.service, self.sim = http, service, sim
        self.admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        self.secrets: set[str] = {ADMIN_KEY, *SIM_SECRETS, *PHONES}

    async def call(self, method: str, url: str, expect: int = 200, **kwargs: Any) -> Any:
        response = await self.http.request(method, url, **kwargs)
        assert response.status_code == expect, f"{method} {url}: {response.text}"
        return response.json() if response.content else None

    async def till(self, till_id: str, store_id: str) -> dict[str, Any]:
        till: dict[str, Any] = await self.call(
            "POST",
            f"{self.service}/api/v1/tills",
            201,
            json={"tillId": till_id, "storeId": store_id, "locationDescription": till_id},
            headers=self.admin,
        )
        self.secrets.add(till["apiKey"])
        return till

    async def scan(self, till: dict[str, Any], phone: str) -> None:
        scanned = await self.call(
            "POST", f"{self.sim}/_sim/qr/{till['merchantQrId']}/scan", json={"phoneNumber": phone}
        )
        self.secrets.add(scanned["customerToken"])

    async def ring_up(self, till: dict[str, Any], amount: int) -> dict[str, Any]:
        checkout: dict[str, Any] = await self.call(
            "POST",
            f"{self.service}/api/v1/tills/{till['tillId']}/checkouts",
            201,
            json={"amount": amount, "description": "Kasse"},
            headers=pos(till),
        )
        return checkout

    async def wait(self, till: dict[str, Any], checkout_id: str, *states: str) -> dict[str, Any]:
        url = f"{self.service}/api/v1/checkouts/{checkout_id}"
        current: dict[str, Any] = await self.call("GET", url, headers=pos(till))
        for _ in range(60):
            if current["state"] in states or (not states and current["paymentSent"]):
                return current
            current = await self.call(
                "GET", url, params={"wait": 1, "version": current["version"]}, headers=pos(till)
            )
        raise AssertionError(f"{checkout_id} stuck in {current['state']}")


def pos(till: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {till['apiKey']}"}


async def test_every_log_line_is_json_with_an_event_and_free_of_pii_and_secrets(
    service: ServiceProcess,
    simulator: BackgroundServer,
    simulator_app: Any,
    http: httpx.AsyncClient,
) -> None:
    run = Run(http, service.url, simulator.url)
    await run.call("POST", f"{service.url}/api/v1/webhooks/123456/ensure", headers=run.admin)
    await run.call(
        "PUT",
        f"{service.url}/api/v1/stores/club-store",
        json={"name": "Club store", "clubPolicy": "lookup"},
        headers=run.admin,
    )
    plain = await run.till("plain-till", "plain-store")
    club = await run.till("club-till", "club-store")

    # Basket first, approved with a phone number, then partly refunded.
    sale = await run.ring_up(plain, 12900)
    await run.scan(plain, PHONES[0])
    sale = await run.wait(plain, sale["id"])
    await run.call(
        "POST",
        f"{simulator.url}/_sim/payments/{sale['reference']}/approve",
        json={"phoneNumber": PHONES[0]},
    )
    await run.wait(plain, sale["id"], "CAPTURED")
    refunded = await run.call(
        "POST",
        f"{service.url}/api/v1/checkouts/{sale['id']}/refund",
        json={"amount": 2900},
        headers=pos(plain),
    )
    assert refunded["state"] == "PARTIALLY_REFUNDED"

    # Scan first at the club store, then the basket; the customer declines.
    await run.scan(club, PHONES[1])

    async def check_in_waits() -> bool:  # the check-in waits for the basket
        inbox = await run.call("GET", f"{service.url}/api/v1/inbox", headers=run.admin)
        return any(row["outcome"] == "waiting" for row in inbox)

    await eventually(check_in_waits, "the check-in to wait for the basket")
    declined = await run.wait(club, (await run.ring_up(club, 4900))["id"])
    await run.call("POST", f"{simulator.url}/_sim/payments/{declined['reference']}/decline")
    await run.wait(club, declined["id"], "REJECTED")

    # The till display: the token and the cookie it becomes are credentials too.
    issued = await run.call(
        "POST", f"{service.url}/api/v1/tills/plain-till/display-token", 201, headers=pos(plain)
    )
    run.secrets.add(issued["token"])
    session = await http.post(
        f"{service.url}/tills/plain-till/display/session",
        headers={"Authorization": f"Bearer {issued['token']}"},
    )
    assert session.status_code == 200
    cookie = session.cookies["vipps_pos_display"]
    run.secrets.add(cookie)
    async with http.stream("GET", f"{service.url}/tills/plain-till/display/events") as stream:
        assert stream.status_code == 200

    # Things an attacker or a broken till sends.
    await run.call(
        "POST",
        f"{service.url}/webhooks/vipps/123456",
        401,
        content=json.dumps({"merchantQrId": club["merchantQrId"], "customerToken": "forged-1"}),
        headers={"Authorization": "HMAC-SHA256 SignedHeaders=x&Signature=bad"},
    )
    await run.call(
        "GET",
        f"{service.url}/api/v1/checkouts/{sale['id']}",
        401,
        headers={"Authorization": "Bearer vpk_0123456789abcdef_not-a-real-key-0123456789"},
    )

    for registration in (await run.call("GET", f"{simulator.url}/_sim/webhooks"))["registrations"]:
        run.secrets.add(registration["secret"])
    for delivery in await run.call("GET", f"{simulator.url}/_sim/deliveries"):
        token = delivery["payload"].get("customerToken")
        if token:
            run.secrets.add(token)
    sim: Simulator = simulator_app.state.simulator
    run.secrets.update(sim.state.access_tokens)
    assert len(run.secrets) > 10

    service.stop()  # flushes and writes the shutdown lines too
    lines = service.log_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) > 50

    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"line {number} is not JSON: {line[:200]}")
        assert isinstance(record, dict), f"line {number} is not an object"
        event = record.get("event")
        assert isinstance(event, str), f"line {number} has no event name"
        assert event.strip(), f"line {number} has an empty event name"
        records.append(record)

    findings = find_pii("\n".join(lines), known_secrets=sorted(run.secrets))
    assert findings == [], findings

    # The service's own lines use stable dotted names; library lines carry their message.
    for record in records:
        if str(record.get("logger", "")).startswith("app."):
            assert DOTTED.fullmatch(record["event"]), record["event"]
    events = {r["event"] for r in records}
    assert {"service.started", "checkout.created", "checkout.transition"} <= events
    assert {"vipps.webhook.received", "display.stream.opened", "service.stopped"} <= events
    transitions = [r for r in records if r["event"] == "checkout.transition"]
    assert all(r.get("checkout_id") for r in transitions)
    assert any(r.get("request_id") for r in records)
