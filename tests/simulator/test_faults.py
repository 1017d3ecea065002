"""One test per fault mode (issue 3 §5). Each would fail if the fault did nothing."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.simulator.conftest import Env, open_env


async def _fault(env: Env, **rule: object) -> dict[str, object]:
    response = await env.client.post("/_sim/faults", json=rule)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_latency_is_added(env: Env) -> None:
    await _fault(env, kind="latency", operation="getPayment", latencyMs=80)
    await env.create("fault-0001")
    started = time.perf_counter()
    assert (
        await env.client.get("/epayment/v1/payments/fault-0001", headers=env.headers())
    ).status_code == 200
    assert time.perf_counter() - started >= 0.08


@pytest.mark.parametrize("status", [500, 502, 503, 423])
async def test_error_statuses_answer_without_effect(env: Env, status: int) -> None:
    await env.authorized("fault-0002")
    await _fault(env, kind="error", status=status, operation="capturePayment", times=1)
    failed = await env.modify("fault-0002", "capture", 10000, key="cap")
    assert failed.status_code == status
    assert failed.headers["content-type"] == "application/problem+json"
    payment = (
        await env.client.get("/epayment/v1/payments/fault-0002", headers=env.headers())
    ).json()
    assert payment["aggregate"]["capturedAmount"]["value"] == 0
    retried = await env.modify(
        "fault-0002", "capture", 10000, key="cap"
    )  # times=1: the retry passes
    assert retried.status_code == 200
    ledger = (await env.client.get("/_sim/ledger", params={"operation": "capturePayment"})).json()
    assert [(e["fault"], e["effect"]) for e in ledger] == [(f"error:{status}", False), (None, True)]


async def test_429_carries_retry_after(env: Env) -> None:
    await _fault(env, kind="error", status=429, retryAfter=3, path="/epayment/v1/payments/*")
    response = await env.client.get("/epayment/v1/payments/fault-0003", headers=env.headers())
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"


async def test_connection_reset_happens_before_the_effect(env: Env) -> None:
    await _fault(env, kind="reset", operation="createPayment", times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        await env.create("fault-0004", key="k")
    assert (
        await env.client.get("/epayment/v1/payments/fault-0004", headers=env.headers())
    ).status_code == 404
    assert (await env.create("fault-0004", key="k")).status_code == 201


async def test_hang_until_the_client_times_out(env: Env) -> None:
    await _fault(env, kind="hang", operation="createPayment", hangSeconds=30)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(env.create("fault-0005"), timeout=0.1)
    await env.client.delete("/_sim/faults")
    assert (
        await env.client.get("/epayment/v1/payments/fault-0005", headers=env.headers())
    ).status_code == 404


async def test_hang_gives_up_after_hang_seconds_with_a_dropped_connection(env: Env) -> None:
    await _fault(env, kind="hang", operation="getPayment", hangSeconds=0.05)
    with pytest.raises(httpx.RemoteProtocolError):
        await env.client.get("/epayment/v1/payments/fault-0006", headers=env.headers())


async def test_commit_then_drop_the_response_and_the_retry_replays(env: Env) -> None:
    await _fault(env, kind="drop_response", operation="createPayment", times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        await env.create("fault-0007", key="create-k")
    # The effect is committed...
    assert (
        await env.client.get("/epayment/v1/payments/fault-0007", headers=env.headers())
    ).status_code == 200
    # ...and a retry with the same key gets the original answer, with no second payment.
    retry = await env.create("fault-0007", key="create-k")
    assert (retry.status_code, retry.json()) == (201, {"reference": "fault-0007"})
    ledger = (
        await env.client.get(
            "/_sim/ledger", params={"reference": "fault-0007", "operation": "createPayment"}
        )
    ).json()
    assert sum(e["effect"] for e in ledger) == 1
    assert ledger[0]["responseDropped"] is True
    assert ledger[1]["replay"] is True


async def test_probabilities_are_reproducible_with_a_seed() -> None:
    async def pattern() -> list[int]:
        async with open_env(fault_seed=42) as env:
            await _fault(
                env, kind="error", status=503, probability=0.5, operation="GetMerchantCallbackQrs"
            )
            return [
                (
                    await env.client.get("/qr/v1/merchant-callback", headers=env.headers())
                ).status_code
                for _ in range(20)
            ]

    first, second = await pattern(), await pattern()
    assert first == second
    assert 0 < first.count(503) < 20


async def test_sim_controls_are_never_faulted(env: Env) -> None:
    await _fault(env, kind="error", status=500, path="*")
    assert (await env.client.get("/_sim/ledger")).status_code == 200
    assert (
        await env.client.get("/qr/v1/merchant-callback", headers=env.headers())
    ).status_code == 500


async def test_fault_rules_can_be_listed_and_deleted(env: Env) -> None:
    rule = await _fault(env, kind="error", status=500, operation="getPayment")
    listed = (await env.client.get("/_sim/faults")).json()
    assert [r["id"] for r in listed["rules"]] == [rule["id"]]
    assert "capturePayment" in listed["operations"]
    assert (await env.client.delete(f"/_sim/faults/{rule['id']}")).status_code == 204
    assert (await env.client.get("/_sim/faults")).json()["rules"] == []


@pytest.mark.parametrize(
    "rule",
    [
        {"kind": "explode"},
        {"kind": "error", "status": 418},
        {"kind": "error", "probability": 2},
        {"kind": "latency", "operation": "nope"},
    ],
)
async def test_bad_fault_rules_are_refused(env: Env, rule: dict[str, object]) -> None:
    assert (await env.client.post("/_sim/faults", json=rule)).status_code == 400


# ---------------------------------------------------------------- webhook faults


async def test_duplicate_webhook_delivery(env: Env) -> None:
    await env.register(["epayments.payment.created.v1"])
    await _fault(env, kind="webhook_duplicate", event="epayments.payment.created.v1")
    await env.create("fault-0100")
    assert await env.sim.webhooks.drain()
    assert len(env.receiver.received) == 2
    assert env.receiver.received[0].body == env.receiver.received[1].body
    log = (await env.client.get("/_sim/deliveries")).json()
    assert log[1]["duplicateOf"] == log[0]["id"]


async def test_reordered_webhook_arrives_after_later_events(env: Env) -> None:
    await env.register(["epayments.payment.created.v1", "epayments.payment.authorized.v1"])
    await _fault(env, kind="webhook_reorder", event="*.created.v1", delaySeconds=0.05)
    await env.authorized("fault-0101")
    assert await env.sim.webhooks.drain()
    assert [b["name"] for b in env.receiver.events()] == ["AUTHORIZED", "CREATED"]


async def test_delayed_webhook_keeps_the_order(env: Env) -> None:
    await env.register(["epayments.payment.created.v1", "epayments.payment.authorized.v1"])
    await _fault(env, kind="webhook_delay", event="*.created.v1", delaySeconds=0.05)
    started = time.perf_counter()
    await env.authorized("fault-0102")
    assert await env.sim.webhooks.drain()
    assert time.perf_counter() - started >= 0.05
    assert [b["name"] for b in env.receiver.events()] == ["CREATED", "AUTHORIZED"]


async def test_paused_delivery_holds_everything_until_resumed(env: Env) -> None:
    await env.register(["epayments.payment.created.v1"])
    await env.client.post("/_sim/webhooks/pause")
    await env.create("fault-0103")
    assert not await env.sim.webhooks.drain(0.05)
    assert env.receiver.received == []
    await env.client.post("/_sim/webhooks/resume")
    assert await env.sim.webhooks.drain()
    assert len(env.receiver.received) == 1
