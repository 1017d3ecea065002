"""The simulator over real HTTP (uvicorn in a thread), and strict mode."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import uvicorn

from app.simulator import SimulatorConfig, create_simulator_app
from tests.simulator.conftest import SUBSCRIPTION_KEY, Env, Receiver, open_env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served() -> Iterator[tuple[str, Receiver]]:
    receiver = Receiver()
    config = SimulatorConfig(
        webhook_transport=httpx.ASGITransport(receiver.app), webhook_retry_delays=(0.01,)
    )
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_simulator_app(config), host="127.0.0.1", port=port, log_level="critical"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}", receiver
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
async def http(served: tuple[str, Receiver]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served[0], timeout=5) as client:
        yield client


async def _headers(client: httpx.AsyncClient) -> dict[str, str]:
    token = await client.post(
        "/accesstoken/get",
        headers={
            "client_id": "sim-client-id",
            "client_secret": "sim-client-secret",
            "Ocp-Apim-Subscription-Key": SUBSCRIPTION_KEY,
        },
    )
    return {
        "Authorization": f"Bearer {token.json()['access_token']}",
        "Ocp-Apim-Subscription-Key": SUBSCRIPTION_KEY,
        "Merchant-Serial-Number": "123456",
    }


async def test_over_real_http_qr_image_scan_and_signed_webhook(
    http: httpx.AsyncClient, served: tuple[str, Receiver]
) -> None:
    headers = await _headers(http)
    hook = await http.post(
        "/webhooks/v1/webhooks",
        headers=headers,
        json={"url": "https://pos.example/h", "events": ["user.checked-in.v1"]},
    )
    assert (
        await http.put(
            "/qr/v1/merchant-callback/till-1",
            headers=headers,
            json={"locationDescription": "Kasse 1"},
        )
    ).status_code == 200
    qr = (
        await http.get(
            "/qr/v1/merchant-callback/till-1", headers=headers, params={"QrImageFormat": "PNG"}
        )
    ).json()
    assert qr["qrImageUrl"].startswith(served[0])
    image = await http.get(qr["qrImageUrl"])
    assert image.content.startswith(b"\x89PNG")
    assert (await http.post("/_sim/qr/till-1/scan")).status_code == 200
    assert (await http.post("/_sim/deliveries/drain", json={"timeout": 5})).json()[
        "drained"
    ] is True
    received = served[1].received[0]
    served[1].verify(received, hook.json()["secret"])


async def test_over_real_http_reset_and_commit_then_drop(http: httpx.AsyncClient) -> None:
    headers = await _headers(http)
    # A fresh sales unit is not approved for PUSH_MESSAGE; Vipps MobilePay approves it on request.
    approved = await http.post("/_sim/sales-units/123456", json={"pushMessageAllowed": True})
    assert approved.json()["pushMessageAllowed"] is True
    await http.post("/_sim/faults", json={"kind": "reset", "operation": "getPayment", "times": 1})
    with pytest.raises(httpx.TransportError):
        await http.get("/epayment/v1/payments/http-00001", headers=headers)
    await http.post(
        "/_sim/faults", json={"kind": "drop_response", "operation": "createPayment", "times": 1}
    )
    body = {
        "amount": {"currency": "NOK", "value": 1000},
        "paymentMethod": {"type": "WALLET"},
        "reference": "http-00002",
        "userFlow": "PUSH_MESSAGE",
        "customer": {"phoneNumber": "4712345678"},
    }
    with pytest.raises(httpx.TransportError):
        await http.post(
            "/epayment/v1/payments", headers={**headers, "Idempotency-Key": "k1"}, json=body
        )
    retry = await http.post(
        "/epayment/v1/payments", headers={**headers, "Idempotency-Key": "k1"}, json=body
    )
    assert retry.status_code == 201
    ledger = (await http.get("/_sim/ledger", params={"reference": "http-00002"})).json()
    assert [(e["effect"], e["responseDropped"], e["replay"]) for e in ledger] == [
        (True, True, False),
        (False, False, True),
    ]


async def test_over_real_http_hang_ends_at_the_client_timeout(http: httpx.AsyncClient) -> None:
    headers = await _headers(http)
    await http.post(
        "/_sim/faults", json={"kind": "hang", "operation": "getPayment", "hangSeconds": 5}
    )
    started = time.perf_counter()
    with pytest.raises(httpx.ReadTimeout):
        await http.get("/epayment/v1/payments/http-00003", headers=headers, timeout=0.2)
    assert time.perf_counter() - started < 2


async def test_strict_mode_records_spec_violations_and_accepts_conforming_requests() -> None:
    async with open_env(strict=True) as env:
        await env.create("strict-0001")
        assert (await env.client.get("/_sim/violations")).json() == {
            "strict": True,
            "violations": [],
        }
        receipt = {
            "orderLines": [
                {
                    "name": "Socks",
                    "id": "1",
                    "totalAmount": 10000,
                    "totalAmountExcludingTax": 8000,
                    "totalTaxAmount": 2000,
                    "taxRate": 2500,
                    "unitInfo": {"unitPrice": 5000, "quantity": 2},
                }
            ],
            "bottomLine": {"currency": "NOK"},
        }
        # quantity must be a string per the Order Management spec; the simulator's own checks let it
        # through, strict mode reports it.
        assert (await env.create("strict-0002", receipt=receipt)).status_code == 201
        headers = env.headers(Vipps_System_Name="x" * 31)
        await env.client.post("/epayment/v1/payments/strict-0001/cancel", headers=headers)
        violations = (await env.client.get("/_sim/violations")).json()["violations"]
        assert [v["operation"] for v in violations] == ["createPayment", "cancelPayment"]
        assert "quantity" in violations[0]["problems"][0]
        assert set(violations[1]["problems"]) == {
            "header vipps-system-name is longer than 30 characters",
            "header Idempotency-Key is required",
        }
        # cancelTransactionOnly is newer than spec 1.4.1 and is accepted (REFERENCE.md §7.6).
        await env.modify("strict-0002", "cancel", body={"cancelTransactionOnly": True})
        assert len((await env.client.get("/_sim/violations")).json()["violations"]) == 2


async def test_strict_mode_can_be_switched_at_runtime(env: Env) -> None:
    await env.client.post("/_sim/strict", json={"enabled": True})
    await env.client.post("/epayment/v1/payments/none-0001/cancel", headers=env.headers())
    assert len((await env.client.get("/_sim/violations")).json()["violations"]) == 1
