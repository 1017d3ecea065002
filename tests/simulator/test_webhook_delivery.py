"""Webhook delivery semantics (REFERENCE.md §6.3, §6.4): signatures, retries, order, routing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from app.vipps.signature import WebhookSignatureError, verify_webhook
from tests.simulator.conftest import DKK_MSN, Env, open_env


async def test_signature_verifies_with_the_registration_secret_and_registered_url(env: Env) -> None:
    hook = await env.register(
        ["epayments.payment.created.v1"], url="https://pos.example.com:8080/hooks/vipps?store=7"
    )
    await env.create("signed-0001")
    assert await env.sim.webhooks.drain()
    item = env.receiver.received[0]
    assert item.path_and_query == "/hooks/vipps?store=7"
    assert item.host == "pos.example.com:8080"
    env.receiver.verify(item, env.secrets[hook])
    with pytest.raises(WebhookSignatureError):
        verify_webhook(
            ["another-secret"],
            path_and_query=item.path_and_query,
            host=item.host,
            headers=item.headers,
            body=item.body,
            now=datetime.now(UTC),
            max_age=timedelta(minutes=5),
        )
    with pytest.raises(WebhookSignatureError):
        env.receiver.verify(
            type(item)(item.path_and_query, item.host, item.headers, item.body + b" "),
            env.secrets[hook],
        )


async def test_each_registration_signs_with_its_own_secret(env: Env) -> None:
    own = await env.register(["epayments.payment.created.v1"], url="https://a.example/hook")
    partner = await env.register(
        ["epayments.payment.created.v1"], url="https://b.example/hook", msn=None
    )
    await env.create("signed-0002")
    assert await env.sim.webhooks.drain()
    by_host = {r.host: r for r in env.receiver.received}
    env.receiver.verify(by_host["a.example"], env.secrets[own])
    env.receiver.verify(by_host["b.example"], env.secrets[partner])


async def test_only_subscribed_events_are_sent(env: Env) -> None:
    await env.register(["epayments.payment.captured.v1"])
    await env.authorized("subscribed-0001")
    await env.modify("subscribed-0001", "capture", 10000)
    assert await env.sim.webhooks.drain()
    assert [b["name"] for b in env.receiver.events()] == ["CAPTURED"]


async def test_events_go_only_to_registrations_of_the_payment_msn(env: Env) -> None:
    await env.register(["epayments.payment.created.v1"], msn=DKK_MSN)
    await env.create("routing-0001")
    assert await env.sim.webhooks.drain()
    assert env.receiver.received == []


async def test_checked_in_prefers_the_sales_unit_registration_over_the_partner_one(
    env: Env,
) -> None:
    await env.register(["user.checked-in.v1"], url="https://partner.example/hook", msn=None)
    await env.register(["user.checked-in.v1"], url="https://store.example/hook")
    await env.client.put(
        "/qr/v1/merchant-callback/till-1",
        headers=env.headers(),
        json={"locationDescription": "Kasse 1"},
    )
    await env.client.post("/_sim/qr/till-1/scan")
    assert await env.sim.webhooks.drain()
    assert [r.host for r in env.receiver.received] == ["store.example"]


async def test_non_2xx_is_retried_with_backoff_and_logged(env: Env) -> None:
    await env.register(["epayments.payment.created.v1"])
    env.receiver.statuses = [500, 404]
    await env.create("retry-0001")
    assert await env.sim.webhooks.drain()
    log = (await env.client.get("/_sim/deliveries", params={"reference": "retry-0001"})).json()
    assert [a["statusCode"] for a in log[0]["attempts"]] == [500, 404, 200]
    assert log[0]["status"] == "delivered"
    assert len(env.receiver.received) == 3


async def test_connection_errors_are_retried() -> None:
    calls: list[int] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(204)

    async with open_env(webhook_transport=httpx.MockTransport(flaky)) as env:
        await env.register(["epayments.payment.created.v1"])
        await env.create("retry-0002")
        assert await env.sim.webhooks.drain()
        attempts = env.sim.webhooks.log[0].attempts
        assert attempts[0].error is not None
        assert attempts[0].error.startswith("ConnectError")
        assert attempts[1].status_code == 204


async def test_a_failing_event_blocks_later_events_of_the_same_payment(env: Env) -> None:
    await env.register(["epayments.payment.created.v1", "epayments.payment.authorized.v1"])
    env.receiver.statuses = [503, 503]  # CREATED fails twice
    await env.authorized("order-0001")
    assert await env.sim.webhooks.drain()
    assert [b["name"] for b in env.receiver.events()] == [
        "CREATED",
        "CREATED",
        "CREATED",
        "AUTHORIZED",
    ]


async def test_other_payments_are_not_blocked(env: Env) -> None:
    await env.register(["epayments.payment.created.v1"])
    await env.client.post("/_sim/webhooks/pause")
    await env.create("order-0002")
    env.receiver.statuses = [500, 500, 500, 500]
    await env.client.post("/_sim/webhooks/resume")
    await env.create("order-0003")
    assert await env.sim.webhooks.drain()
    references = [b["reference"] for b in env.receiver.events()]
    assert references.count("order-0002") + references.count("order-0003") == len(references)
    assert references[-1] in {"order-0002", "order-0003"}
    assert "order-0003" in references


async def test_an_event_is_dropped_after_the_schedule_and_unblocks_the_next(env: Env) -> None:
    await env.register(["epayments.payment.created.v1", "epayments.payment.authorized.v1"])
    env.receiver.statuses = [500] * 4  # 1 attempt + 3 retries, all failing
    await env.authorized("drop-0001")
    assert await env.sim.webhooks.drain()
    log = (await env.client.get("/_sim/deliveries", params={"reference": "drop-0001"})).json()
    assert [(d["event"], d["status"]) for d in log] == [
        ("epayments.payment.created.v1", "dropped"),
        ("epayments.payment.authorized.v1", "delivered"),
    ]


async def test_scan_returns_a_fresh_token_and_emits_checked_in(env: Env) -> None:
    hook = await env.register(["user.checked-in.v1"])
    await env.client.put(
        "/qr/v1/merchant-callback/till-1",
        headers=env.headers(),
        json={"locationDescription": "Kasse 1"},
    )
    qr = (await env.client.get("/qr/v1/merchant-callback/till-1", headers=env.headers())).json()
    first = (await env.client.post("/_sim/qr/till-1/scan")).json()
    second = (
        await env.client.post(
            "/_sim/scan", json={"qrContent": qr["qrContent"], "phoneNumber": "4798765432"}
        )
    ).json()
    assert first["customerToken"] != second["customerToken"]
    assert first["webhookRegistered"] is True
    assert await env.sim.webhooks.drain()
    bodies = env.receiver.events()
    assert [b["customerToken"] for b in bodies] == [first["customerToken"], second["customerToken"]]
    env.receiver.verify(env.receiver.received[0], env.secrets[hook])
    assert (
        await env.client.post("/_sim/qr/till-1/scan", json={"phoneNumber": "4700000000"})
    ).status_code == 400


async def test_reset_forgets_state_but_keeps_access_tokens(env: Env) -> None:
    await env.register()
    await env.create("reset-0001")
    await env.client.post("/_sim/faults", json={"kind": "latency", "latencyMs": 1})
    assert (await env.client.post("/_sim/reset")).status_code == 200
    assert (
        await env.client.get("/epayment/v1/payments/reset-0001", headers=env.headers())
    ).status_code == 404
    assert (await env.client.get("/_sim/ledger")).json() == []
    assert (await env.client.get("/_sim/faults")).json()["rules"] == []
    assert (await env.client.get("/webhooks/v1/webhooks", headers=env.headers())).json() == {
        "webhooks": []
    }
