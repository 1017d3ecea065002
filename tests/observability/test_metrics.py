"""Every metric family renders with its labels, and 100,000 tills do not explode the series."""

import logging
import time
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.observability import metrics as metrics_module
from app.observability.metrics import OTHER, Metrics, QueueStats

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def families(metrics: Metrics) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    body, _ = metrics.render()
    return {
        family.name: [(s.name, s.labels, s.value) for s in family.samples]
        for family in text_string_to_metric_families(body.decode())
    }


def value(metrics: Metrics, sample_name: str, **labels: str) -> float:
    for samples in families(metrics).values():
        for name, sample_labels, sample_value in samples:
            if name == sample_name and sample_labels == labels:
                return sample_value
    raise AssertionError(f"no sample {sample_name}{labels}")


def series_count(metrics: Metrics) -> int:
    return sum(len(family.samples) for family in metrics.registry.collect())


def drive_every_metric(metrics: Metrics) -> None:
    metrics.count_checkout_finished(store="oslo-1", state="paid")
    metrics.observe_scan_to_payment_request(store="oslo-1", seconds=0.3)
    metrics.observe_payment_request_to_authorization(store="oslo-1", seconds=7.5)
    metrics.observe_webhook_received(
        event_type="epayments.payment.authorized.v1",
        msn="123456",
        received_at=NOW,
        vipps_timestamp=NOW - timedelta(seconds=2),
    )
    metrics.set_queue_stats(
        QueueStats(
            inbox_depth=3,
            inbox_oldest_age_seconds=1.5,
            outbox_depth=7,
            outbox_oldest_age_seconds=None,
        )
    )
    metrics.count_reconciler_repair(kind="authorized")
    metrics.observe_vipps_call(operation="epayment.create_payment", seconds=0.12, status=201)
    metrics.observe_vipps_call(
        operation="epayment.create_payment", seconds=0.4, status=400, error_code="2108"
    )
    metrics.observe_vipps_call(
        operation="epayment.get_payment", seconds=10.0, status=None, error_code="timeout"
    )
    metrics.observe_http_request(
        method="post", route="/tills/{till_id}/checkouts", status=201, seconds=0.05
    )


def test_every_metric_family_renders_with_its_labels():
    metrics = Metrics()
    drive_every_metric(metrics)
    m = metrics

    assert value(m, "vipps_pos_checkouts_finished_total", store="oslo-1", state="paid") == 1
    assert value(m, "vipps_pos_scan_to_payment_request_seconds_count", store="oslo-1") == 1
    assert value(m, "vipps_pos_scan_to_payment_request_seconds_sum", store="oslo-1") == 0.3
    assert (
        value(
            m,
            "vipps_pos_payment_request_to_authorization_seconds_bucket",
            store="oslo-1",
            le="10.0",
        )
        == 1
    )
    assert (
        value(m, "vipps_pos_webhook_lag_seconds_sum", event_type="epayments.payment.authorized.v1")
        == 2
    )
    assert (
        value(m, "vipps_pos_webhook_last_received_timestamp_seconds", msn="123456")
        == NOW.timestamp()
    )
    assert value(m, "vipps_pos_queue_depth", queue="inbox") == 3
    assert value(m, "vipps_pos_queue_depth", queue="outbox") == 7
    assert value(m, "vipps_pos_queue_oldest_age_seconds", queue="inbox") == 1.5
    assert value(m, "vipps_pos_queue_oldest_age_seconds", queue="outbox") == 0
    assert value(m, "vipps_pos_reconciler_repairs_total", kind="authorized") == 1
    assert (
        value(
            m,
            "vipps_pos_vipps_request_duration_seconds_count",
            operation="epayment.create_payment",
            status_class="2xx",
        )
        == 1
    )
    assert (
        value(
            m,
            "vipps_pos_vipps_request_duration_seconds_count",
            operation="epayment.get_payment",
            status_class="error",
        )
        == 1
    )
    assert (
        value(
            m,
            "vipps_pos_vipps_errors_total",
            operation="epayment.create_payment",
            status="400",
            code="2108",
        )
        == 1
    )
    assert (
        value(
            m,
            "vipps_pos_vipps_errors_total",
            operation="epayment.get_payment",
            status="none",
            code="timeout",
        )
        == 1
    )
    assert (
        value(
            m,
            "vipps_pos_http_request_duration_seconds_count",
            method="POST",
            route="/tills/{till_id}/checkouts",
            status="201",
        )
        == 1
    )
    assert "process_cpu_seconds" in families(m)


def test_successful_vipps_calls_are_not_errors():
    metrics = Metrics(process_metrics=False)
    metrics.observe_vipps_call(operation="epayment.get_payment", seconds=0.1, status=200)
    assert families(metrics)["vipps_pos_vipps_errors"] == []


def test_each_instance_has_its_own_registry():
    first, second = Metrics(), Metrics()
    first.count_checkout_finished(store="s", state="paid")
    assert value(first, "vipps_pos_checkouts_finished_total", store="s", state="paid") == 1
    assert families(second)["vipps_pos_checkouts_finished"] == []


def test_render_returns_text_format_or_openmetrics_on_request():
    metrics = Metrics(process_metrics=False)
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    assert b"vipps_pos_queue_depth" in body
    body, content_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_labels_outside_their_sets_do_not_create_series():
    metrics = Metrics(process_metrics=False)
    metrics.observe_vipps_call(operation="/v1/payments/s1-42", seconds=0.1, status=500)
    metrics.observe_vipps_call(
        operation="epayment.get_payment",
        seconds=0.1,
        status=400,
        error_code="Reference s1-42 invalid",
    )
    metrics.observe_vipps_call(operation="epayment.get_payment", seconds=0.1, status=999)
    metrics.observe_http_request(method="BREW", route="unmatched", status=404, seconds=0.01)
    metrics.observe_webhook_received(
        event_type="x", msn="not-an-msn", received_at=NOW, vipps_timestamp=None
    )

    assert (
        value(metrics, "vipps_pos_vipps_errors_total", operation=OTHER, status="500", code="none")
        == 1
    )
    assert (
        value(
            metrics,
            "vipps_pos_vipps_errors_total",
            operation="epayment.get_payment",
            status="400",
            code=OTHER,
        )
        == 1
    )
    assert (
        value(
            metrics,
            "vipps_pos_vipps_request_duration_seconds_count",
            operation="epayment.get_payment",
            status_class="_invalid",
        )
        == 1
    )
    assert (
        value(
            metrics,
            "vipps_pos_http_request_duration_seconds_count",
            method=OTHER,
            route="unmatched",
            status="404",
        )
        == 1
    )
    assert value(metrics, "vipps_pos_webhook_last_received_timestamp_seconds", msn="_invalid") > 0


def test_webhook_lag_counts_clock_skew_as_zero_and_requires_aware_datetimes():
    metrics = Metrics(process_metrics=False)
    metrics.observe_webhook_received(
        event_type="epayments.payment.created.v1",
        msn="123456",
        received_at=NOW,
        vipps_timestamp=NOW + timedelta(seconds=3),
    )
    assert (
        value(
            metrics, "vipps_pos_webhook_lag_seconds_sum", event_type="epayments.payment.created.v1"
        )
        == 0
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        metrics.observe_webhook_received(
            event_type="e",
            msn="123456",
            received_at=datetime(2025, 1, 1),  # noqa: DTZ001 - the case under test
            vipps_timestamp=None,
        )


def test_store_label_is_capped_and_overflow_is_logged_once(caplog):
    # Whatever level an earlier test (the CLI's, say) left the root logger at: warnings here.
    caplog.set_level(logging.WARNING, logger=metrics_module._log.name)
    metrics = Metrics(max_stores=2, process_metrics=False)
    for store in ("a", "b", "c", "d", "a"):
        metrics.count_checkout_finished(store=store, state="paid")
    assert value(metrics, "vipps_pos_checkouts_finished_total", store="a", state="paid") == 2
    assert value(metrics, "vipps_pos_checkouts_finished_total", store=OTHER, state="paid") == 2
    overflow = [r for r in caplog.records if "metrics.label_overflow" in r.getMessage()]
    assert len(overflow) == 1


def test_series_stay_bounded_with_100000_tills():
    """A demo-like day: 100,000 tills in 5,000 stores, each finishing one checkout.

    Till ids never reach a label; stores beyond the cap share ``_other``; the series count is
    what the caps allow, not what the tills would.
    """
    max_stores = 1_000
    metrics = Metrics(max_stores=max_stores, process_metrics=False)
    states = ("paid", "cancelled", "expired", "declined", "failed")
    started = time.monotonic()
    for till in range(100_000):
        store = f"store-{till // 20:04d}"
        metrics.count_checkout_finished(store=store, state=states[till % len(states)])
        metrics.observe_scan_to_payment_request(store=store, seconds=0.2)
        metrics.observe_payment_request_to_authorization(store=store, seconds=6.0)
        metrics.observe_http_request(
            method="POST", route="/tills/{till_id}/checkouts", status=201, seconds=0.01
        )
        metrics.observe_webhook_received(
            event_type="epayments.payment.authorized.v1",
            msn=str(100_000 + till % 50),
            received_at=NOW,
            vipps_timestamp=NOW,
        )
    elapsed = time.monotonic() - started

    body, _ = metrics.render()
    assert b"till-" not in body
    stores = max_stores + 1  # + _other
    counter = stores * len(states) * 2  # _total and _created
    histogram = lambda buckets: buckets + 1 + 3  # noqa: E731 - buckets, +Inf, _count, _sum, _created
    expected = (
        counter
        + stores * histogram(10)  # scan -> payment request
        + stores * histogram(10)  # payment request -> authorization
        + histogram(10)  # one HTTP route
        + histogram(12)  # one webhook event type
        + 50  # last webhook per MSN
        + 4  # queue gauges
        + 2  # save conflicts (_total and _created)
    )
    assert series_count(metrics) == expected
    assert series_count(metrics) < 100_000 / 2
    total = value(metrics, "vipps_pos_checkouts_finished_total", store=OTHER, state="paid")
    assert total == (100_000 - max_stores * 20) / len(states)
    assert elapsed < 60
