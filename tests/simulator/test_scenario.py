"""The scripted scenario of issue 3: register webhook, create QR, scan, create payment, approve,
capture, refund — checking requests, responses and signed webhooks against REFERENCE.md §9."""

from __future__ import annotations

from app.simulator.conformance import validate_response, validate_schema
from tests.simulator.conftest import MSN, Env


async def test_register_qr_scan_pay_approve_capture_refund(env: Env) -> None:
    hook_id = await env.register()
    put = await env.client.put(
        "/qr/v1/merchant-callback/till-1",
        headers=env.headers(),
        json={"locationDescription": "Kasse 1", "category": "IN_STORE"},
    )
    assert put.status_code == 200
    assert put.content == b""
    qr = (await env.client.get("/qr/v1/merchant-callback/till-1", headers=env.headers())).json()
    validate_response("GET", "/qr/v1/merchant-callback/till-1", 200, qr)

    scan = (
        await env.client.post("/_sim/qr/till-1/scan", json={"phoneNumber": "4798765432"})
    ).json()
    token = scan["customerToken"]

    exchanged = await env.client.post(
        "/qr/v1/exchange/customer",
        headers=env.headers(),
        json={"customer": {"customerToken": token}, "requestedData": ["MSISDN"]},
    )
    assert exchanged.json()["msisdn"] == "4798765432"

    created = await env.create(
        "s1-pos2-20240612-0042", 10000, key="create-0042", customer={"customerToken": token}
    )
    assert created.status_code == 201
    assert created.json() == {"reference": "s1-pos2-20240612-0042"}  # PUSH_MESSAGE: no redirectUrl

    approve = await env.client.post(
        "/epayment/v1/test/payments/s1-pos2-20240612-0042/approve",
        headers=env.headers(),
        json={"customer": {"phoneNumber": "4798765432"}},
    )
    assert approve.status_code == 200
    payment = (
        await env.client.get("/epayment/v1/payments/s1-pos2-20240612-0042", headers=env.headers())
    ).json()
    assert payment["state"] == "AUTHORIZED"
    assert payment["aggregate"]["authorizedAmount"]["value"] == 10000

    capture = await env.modify("s1-pos2-20240612-0042", "capture", 10000, key="capture-0042")
    assert capture.status_code == 200
    assert capture.json()["aggregate"]["capturedAmount"]["value"] == 10000
    refund = await env.modify("s1-pos2-20240612-0042", "refund", 2500, key="refund-0042-1")
    assert refund.status_code == 200
    assert refund.json()["aggregate"]["refundedAmount"]["value"] == 2500
    assert refund.json()["state"] == "AUTHORIZED"  # it stays AUTHORIZED after capture and refund

    assert await env.sim.webhooks.drain()
    received = env.receiver.received
    bodies = [r.json() for r in received]
    assert bodies[0] == {
        "customerToken": token,
        "merchantQrId": "till-1",
        "msn": MSN,
        "initiatedAt": scan["initiatedAt"],
    }
    assert [b.get("name") for b in bodies[1:]] == ["CREATED", "AUTHORIZED", "CAPTURED", "REFUNDED"]
    for item in received:
        env.receiver.verify(item, env.secrets[hook_id])
        assert item.path_and_query == "/vipps/webhooks/123456?tenant=a"
        assert item.host == "pos.example.com"
    for body in bodies[1:]:
        validate_schema("epayment", "WebhookEvent", body)
        assert body["msn"] == MSN
        assert body["reference"] == "s1-pos2-20240612-0042"
    assert [b["idempotencyKey"] for b in bodies[1:]] == [
        "create-0042",
        "create-0042",
        "capture-0042",
        "refund-0042-1",
    ]
    assert bodies[4]["amount"] == {"currency": "NOK", "value": 2500}

    ledger = (await env.client.get("/_sim/ledger")).json()
    assert [e["operation"] for e in ledger] == [
        "registerWebhook",
        "PutMerchantCallbackQr",
        "createPayment",
        "forceApprove",
        "capturePayment",
        "refundPayment",
    ]
    assert all(e["effect"] for e in ledger)
