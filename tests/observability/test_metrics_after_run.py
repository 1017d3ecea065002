"""/metrics after a demo-like run: a paid sale, a declined one and a sale whose authorization
webhook never came (the reconciler repaired it). Each metric family of issue 9 is present with
values that follow from what happened."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.stack import Stack, in_process_stack
from tests.support.waiting import eventually

Samples = dict[str, list[tuple[dict[str, str], float]]]


async def scrape(stack: Stack) -> Samples:
    response = await stack.service.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample with exactly these labels (0 when the series does not exist)."""
    for sample_labels, sample_value in samples.get(name, []):
        if sample_labels == labels:
            return sample_value
    return 0.0


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series whose labels include ``labels``."""
    return sum(
        v for found, v in samples.get(name, []) if all(found.get(k) == x for k, x in labels.items())
    )


async def sell(stack: Stack, till: dict[str, Any], amount: int) -> dict[str, Any]:
    checkout = await stack.checkout(till, amount, description="Kasse 1")
    await stack.scan(till)
    return await stack.wait_for(till, checkout["id"], lambda c: c["paymentSent"])


async def at_rest(stack: Stack) -> Samples:
    """Scrape until both queues are empty (deliveries and captures finish in the background)."""

    async def quiet() -> Samples | None:
        samples = await scrape(stack)
        depths = [value(samples, "vipps_pos_queue_depth", queue=q) for q in ("inbox", "outbox")]
        return samples if depths == [0, 0] else None

    samples: Samples = await eventually(quiet, "empty inbox and outbox queues", timeout=15)
    return samples


async def test_metrics_after_a_paid_a_declined_and_a_repaired_sale(pg_url: str) -> None:
    async with in_process_stack(pg_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till("till-1", store_id="store-1")

        # One capture attempt fails with 503; the outbox retries it with the same key.
        fault = await stack.sim.post(
            "/_sim/faults",
            json={"kind": "error", "status": 503, "operation": "capturePayment", "times": 1},
        )
        assert fault.status_code == 201
        paid = await sell(stack, till, 12900)
        await stack.approve(paid["reference"])
        await stack.wait_state(till, paid["id"], "CAPTURED", timeout=20)

        declined = await sell(stack, till, 4900)
        await stack.decline(declined["reference"])
        await stack.wait_state(till, declined["id"], "REJECTED")

        # The authorization webhook is held back: only the reconciler's polling can tell us.
        repaired = await sell(stack, till, 9900)
        assert (await stack.sim.post("/_sim/webhooks/pause")).status_code == 200
        await stack.approve(repaired["reference"])
        await stack.wait_state(till, repaired["id"], "CAPTURED", timeout=20)
        assert (await stack.sim.post("/_sim/webhooks/resume")).status_code == 200
        drained = await stack.sim.post("/_sim/deliveries/drain", json={"timeout": 10})
        assert drained.json()["drained"] is True

        samples = await at_rest(stack)
        now = time.time()

    finished = "vipps_pos_checkouts_finished_total"
    assert value(samples, finished, store="store-1", state="CAPTURED") == 2
    assert value(samples, finished, store="store-1", state="REJECTED") == 1
    assert total(samples, finished) == 3

    scan_to_request = "vipps_pos_scan_to_payment_request_seconds"
    assert value(samples, f"{scan_to_request}_count", store="store-1") == 3
    assert 0 < value(samples, f"{scan_to_request}_sum", store="store-1") < 30
    request_to_auth = "vipps_pos_payment_request_to_authorization_seconds"
    assert value(samples, f"{request_to_auth}_count", store="store-1") == 2
    assert 0 < value(samples, f"{request_to_auth}_sum", store="store-1") < 60

    lag = "vipps_pos_webhook_lag_seconds_count"
    assert value(samples, lag, event_type="user.checked-in.v1") >= 3
    assert value(samples, lag, event_type="epayments.payment.authorized.v1") >= 2
    assert value(samples, lag, event_type="epayments.payment.aborted.v1") >= 1
    last_received = value(
        samples, "vipps_pos_webhook_last_received_timestamp_seconds", msn="123456"
    )
    assert now - 60 < last_received <= now + 1

    for queue in ("inbox", "outbox"):
        assert value(samples, "vipps_pos_queue_depth", queue=queue) == 0
        assert value(samples, "vipps_pos_queue_oldest_age_seconds", queue=queue) == 0

    assert value(samples, "vipps_pos_reconciler_repairs_total", kind="vipps_authorized") >= 1

    calls = "vipps_pos_vipps_request_duration_seconds_count"
    assert total(samples, calls, operation="epayment.create_payment", status_class="2xx") == 3
    assert total(samples, calls, operation="epayment.capture_payment", status_class="2xx") == 2
    assert total(samples, calls, operation="epayment.capture_payment", status_class="5xx") == 1
    assert total(samples, calls, operation="epayment.get_payment") >= 1  # the reconciler's poll
    assert total(samples, calls, operation="accesstoken.get") >= 1
    assert total(samples, calls, operation="_other") == 0, (
        "a client operation is not in VIPPS_OPERATIONS"
    )
    errors = "vipps_pos_vipps_errors_total"
    assert total(samples, errors, operation="epayment.capture_payment", status="503") == 1
    assert total(samples, errors, operation="epayment.create_payment") == 0

    http = "vipps_pos_http_request_duration_seconds_count"
    route = "/api/v1/tills/{till_id}/checkouts"
    assert value(samples, http, method="POST", route=route, status="201") == 3
    assert value(samples, http, method="POST", route="/webhooks/vipps/{msn}", status="200") > 0
    assert not any("till-1" in labels.get("route", "") for labels, _ in samples[http])
