"""Prometheus metrics for the service, on a registry owned by one :class:`Metrics` instance.

Each app builds its own ``Metrics`` (tests build several apps in one process, and the global
default registry would reject the second set of names). ``/metrics`` returns
:meth:`Metrics.render`.

Cardinality
-----------
The service is sized for 100,000 tills. A label with one value per till would multiply every
metric by 100,000 time series (and histograms by 100,000 × buckets), which no Prometheus server
stores comfortably. So:

- **No metric has a till label.** Per-till facts (state of the active checkout, last scan) are in
  the logs (every line carries ``checkout_id``) and in the API, which is where one looks at a
  single till anyway.
- ``store`` is the finest location label. It is capped: the first ``max_stores`` distinct values
  (default 2,000) are kept, later ones are counted under ``store="_other"`` and a
  ``metrics.label_overflow`` warning is logged once per label. Set ``max_stores`` to the real
  number of stores; the bound holds whatever the input.
- Every other label has a fixed or capped value set: Vipps operations come from
  :data:`VIPPS_OPERATIONS`, HTTP routes are route *templates* (``/tills/{till_id}``, never raw
  paths), status and error codes must look like an HTTP status or a Vipps error code, MSNs must
  be 4–6 digits, and each free-form label (final state, event type, repair kind) is capped too.
  Values outside a set are counted as ``_other`` / ``_invalid`` instead of creating series.

The number of series is therefore bounded by the caps, independent of the number of tills,
checkouts or requests; ``tests/observability/test_metrics.py`` drives 100,000 tills through
every metric and checks the count.

Queue gauges
------------
Inbox/outbox depth and age need a database query, which cannot run inside the synchronous
Prometheus scrape. The service sets them with :meth:`Metrics.set_queue_stats`, either from a
periodic task or just before calling :meth:`Metrics.render` in the ``/metrics`` handler.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import choose_encoder

from app.persistence.counters import StatementCounter

__all__ = [
    "DEFAULT_MAX_STORES",
    "OTHER",
    "VIPPS_OPERATIONS",
    "Metrics",
    "QueueStats",
]

_log = logging.getLogger(__name__)

OTHER = "_other"
_INVALID = "_invalid"
_NONE = "none"

DEFAULT_MAX_STORES = 2_000

# Names the Vipps client uses for its calls (``_Call.operation`` in app/vipps/client.py and
# ``FETCH_OPERATION`` in app/vipps/tokens.py). A fixed list, so the operation label is bounded;
# a name missing here is counted as ``_other``.
VIPPS_OPERATIONS: tuple[str, ...] = (
    "accesstoken.get",
    "qr.put_callback_qr",
    "qr.get_callback_qr",
    "qr.list_callback_qrs",
    "qr.delete_callback_qr",
    "qr.exchange_customer_token",
    "epayment.create_payment",
    "epayment.get_payment",
    "epayment.get_payment_events",
    "epayment.cancel_payment",
    "epayment.capture_payment",
    "epayment.refund_payment",
    "epayment.force_approve_payment",
    "webhooks.register",
    "webhooks.list",
    "webhooks.delete",
    "login.discovery",
    "login.ciba_start",
    "login.ciba_token",
    "login.userinfo",
)

_TRANSPORT_ERRORS = frozenset({"timeout", "connect", "network", "protocol", "invalid_response"})
_HTTP_STATUS_RE = re.compile(r"[1-5][0-9]{2}")
_VIPPS_CODE_RE = re.compile(r"[0-9]{4}")
_MSN_RE = re.compile(r"[0-9]{4,6}")
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Seconds. A scan is answered by one create-payment call: fast unless Vipps is slow.
_SCAN_TO_REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# The customer reads the push message and approves: seconds to minutes.
_REQUEST_TO_AUTH_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_WEBHOOK_LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_CALL_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Depth and age of the oldest pending row of the inbox and the outbox.

    An ``*_oldest_age_seconds`` of ``None`` means the queue is empty; it is exported as 0.
    """

    inbox_depth: int
    inbox_oldest_age_seconds: float | None
    outbox_depth: int
    outbox_oldest_age_seconds: float | None


class _CappedLabel:
    """Admits the first ``limit`` distinct values of a label; maps later ones to ``_other``.

    Thread-safe; a value once admitted stays admitted, so a series never changes its label.
    """

    def __init__(self, name: str, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"{name}: limit must be at least 1")
        self._name = name
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._warned = False

    def __call__(self, value: object) -> str:
        text = str(value)
        if text in self._seen:
            return text
        with self._lock:
            if text in self._seen:
                return text
            if len(self._seen) < self._limit:
                self._seen.add(text)
                return text
            warn = not self._warned
            self._warned = True
        if warn:
            _log.warning(
                "metrics.label_overflow: label %s reached its cap of %d values; further values "
                "are counted as %s",
                self._name,
                self._limit,
                OTHER,
            )
        return OTHER

    @property
    def limit(self) -> int:
        return self._limit


class Metrics:
    """All service metrics on one private :class:`~prometheus_client.CollectorRegistry`.

    Every ``observe_*``/``count_*`` method normalises its labels first (see the module docstring),
    so no input creates a series beyond the configured caps. Methods are thread-safe and cheap
    (no I/O), so they may be called inside request handlers and workers directly.
    """

    def __init__(
        self,
        *,
        max_stores: int = DEFAULT_MAX_STORES,
        max_final_states: int = 16,
        max_webhook_event_types: int = 32,
        max_repair_kinds: int = 32,
        max_msns: int = 200,
        max_routes: int = 100,
        vipps_operations: Iterable[str] = VIPPS_OPERATIONS,
        process_metrics: bool = True,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._store = _CappedLabel("store", max_stores)
        self._state = _CappedLabel("state", max_final_states)
        self._event_type = _CappedLabel("event_type", max_webhook_event_types)
        self._repair_kind = _CappedLabel("kind", max_repair_kinds)
        self._msn = _CappedLabel("msn", max_msns)
        self._route = _CappedLabel("route", max_routes)
        self._operations = frozenset(vipps_operations)
        # Vipps error codes seen per operation; capped so a misbehaving upstream stays bounded.
        self._vipps_code = _CappedLabel("code", 200)
        self._http_status = _CappedLabel("status", 60)

        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)

        r = self.registry
        self.checkouts_finished = Counter(
            "vipps_pos_checkouts_finished",
            "Checkouts that reached a final state, by store and final state.",
            ["store", "state"],
            registry=r,
        )
        self.scan_to_payment_request = Histogram(
            "vipps_pos_scan_to_payment_request_seconds",
            "From the customer's scan (Vipps callback) to the accepted create-payment call.",
            ["store"],
            buckets=_SCAN_TO_REQUEST_BUCKETS,
            registry=r,
        )
        self.payment_request_to_authorization = Histogram(
            "vipps_pos_payment_request_to_authorization_seconds",
            "From the accepted create-payment call to the authorization.",
            ["store"],
            buckets=_REQUEST_TO_AUTH_BUCKETS,
            registry=r,
        )
        self.webhook_lag = Histogram(
            "vipps_pos_webhook_lag_seconds",
            "From the event's Vipps timestamp to its receipt here (negative skew counts as 0).",
            ["event_type"],
            buckets=_WEBHOOK_LAG_BUCKETS,
            registry=r,
        )
        self.webhook_last_received = Gauge(
            "vipps_pos_webhook_last_received_timestamp_seconds",
            "Unix time of the last webhook received per merchant serial number.",
            ["msn"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "vipps_pos_queue_depth",
            "Pending rows in the inbox (received events) and outbox (Vipps calls to make).",
            ["queue"],
            registry=r,
        )
        self.queue_oldest_age = Gauge(
            "vipps_pos_queue_oldest_age_seconds",
            "Age of the oldest pending row per queue; 0 when the queue is empty.",
            ["queue"],
            registry=r,
        )
        self.reconciler_repairs = Counter(
            "vipps_pos_reconciler_repairs",
            "State changes the reconciler made because no webhook had told us.",
            ["kind"],
            registry=r,
        )
        self.save_conflicts = Counter(
            "vipps_pos_save_conflicts",
            "Decisions saved again because their till changed after they were loaded.",
            registry=r,
        )
        self.vipps_request_duration = Histogram(
            "vipps_pos_vipps_request_duration_seconds",
            "Latency of calls to Vipps MobilePay by operation and HTTP status class.",
            ["operation", "status_class"],
            buckets=_CALL_BUCKETS,
            registry=r,
        )
        self.vipps_errors = Counter(
            "vipps_pos_vipps_errors",
            "Failed calls to Vipps MobilePay by operation, HTTP status and error code.",
            ["operation", "status", "code"],
            registry=r,
        )
        self.http_request_duration = Histogram(
            "vipps_pos_http_request_duration_seconds",
            "Latency of requests served, by method, route template and status.",
            ["method", "route", "status"],
            buckets=_CALL_BUCKETS,
            registry=r,
        )
        for queue in ("inbox", "outbox"):
            self.queue_depth.labels(queue=queue).set(0)
            self.queue_oldest_age.labels(queue=queue).set(0)

    # -- checkouts ---------------------------------------------------------------------------

    def count_checkout_finished(self, *, store: str, state: str) -> None:
        """Count one checkout reaching a final state. Call once per checkout, on the transition."""
        self.checkouts_finished.labels(store=self._store(store), state=self._state(state)).inc()

    def observe_scan_to_payment_request(self, *, store: str, seconds: float) -> None:
        self.scan_to_payment_request.labels(store=self._store(store)).observe(max(seconds, 0.0))

    def observe_payment_request_to_authorization(self, *, store: str, seconds: float) -> None:
        self.payment_request_to_authorization.labels(store=self._store(store)).observe(
            max(seconds, 0.0)
        )

    # -- webhooks ----------------------------------------------------------------------------

    def observe_webhook_received(
        self,
        *,
        event_type: str,
        msn: str,
        received_at: datetime,
        vipps_timestamp: datetime | None,
    ) -> None:
        """Record a webhook's arrival: lag behind its Vipps timestamp and last arrival per MSN.

        Both datetimes must be timezone-aware (:class:`ValueError` otherwise). A Vipps timestamp
        ahead of ``received_at`` is clock skew and counts as zero lag. Call for every delivery,
        duplicates included: the last-received gauge answers "are deliveries still arriving?".
        """
        _require_aware(received_at, "received_at")
        if vipps_timestamp is not None:
            _require_aware(vipps_timestamp, "vipps_timestamp")
            lag = (received_at - vipps_timestamp).total_seconds()
            self.webhook_lag.labels(event_type=self._event_type(event_type)).observe(max(lag, 0.0))
        msn_label = self._msn(msn) if _MSN_RE.fullmatch(msn) else _INVALID
        self.webhook_last_received.labels(msn=msn_label).set(received_at.timestamp())

    # -- queues and workers -------------------------------------------------------------------

    def set_queue_stats(self, stats: QueueStats) -> None:
        """Set the inbox/outbox gauges from one consistent reading of both queues."""
        self.queue_depth.labels(queue="inbox").set(stats.inbox_depth)
        self.queue_depth.labels(queue="outbox").set(stats.outbox_depth)
        self.queue_oldest_age.labels(queue="inbox").set(stats.inbox_oldest_age_seconds or 0.0)
        self.queue_oldest_age.labels(queue="outbox").set(stats.outbox_oldest_age_seconds or 0.0)

    def watch_database(self, counter: StatementCounter) -> None:
        """Expose the database statement counts (read when scraped: nothing per statement)."""
        self.registry.register(_DatabaseCollector(counter))

    def count_save_conflict(self) -> None:
        self.save_conflicts.inc()

    def count_reconciler_repair(self, *, kind: str) -> None:
        """Count one repair, e.g. ``kind="authorized"`` for a missed authorization webhook."""
        self.reconciler_repairs.labels(kind=self._repair_kind(kind)).inc()

    # -- Vipps calls ---------------------------------------------------------------------------

    def observe_vipps_call(
        self,
        *,
        operation: str,
        seconds: float,
        status: int | None,
        error_code: str | None = None,
    ) -> None:
        """Record one call to Vipps (one HTTP attempt, so retries are counted individually).

        ``status`` is the HTTP status, or ``None`` when no response arrived; then ``error_code``
        names the transport failure (``timeout``, ``connect``, ``network``, ``protocol``,
        ``invalid_response``). For an answered call ``error_code`` may carry the Vipps
        4-digit error code from the problem body. A call is an error when no response arrived or
        the status is 4xx/5xx; errors are counted by operation, status and code.
        """
        op = operation if operation in self._operations else OTHER
        status_text = self._status(status)
        if status is None:
            status_class = "error"
        elif _HTTP_STATUS_RE.fullmatch(str(status)):
            status_class = f"{status // 100}xx"
        else:
            status_class = _INVALID
        self.vipps_request_duration.labels(operation=op, status_class=status_class).observe(
            max(seconds, 0.0)
        )
        if status is None or status >= 400:
            self.vipps_errors.labels(
                operation=op, status=status_text, code=self._error_code(error_code)
            ).inc()

    def _status(self, status: int | None) -> str:
        if status is None:
            return _NONE
        text = str(status)
        return self._http_status(text) if _HTTP_STATUS_RE.fullmatch(text) else _INVALID

    def _error_code(self, code: str | None) -> str:
        if code is None or code == "":
            return _NONE
        if code in _TRANSPORT_ERRORS:
            return code
        if _VIPPS_CODE_RE.fullmatch(code) or _HTTP_STATUS_RE.fullmatch(code):
            return self._vipps_code(code)
        return OTHER

    # -- HTTP server --------------------------------------------------------------------------

    def observe_http_request(self, *, method: str, route: str, status: int, seconds: float) -> None:
        """Record one served request. ``route`` must be the route template, not the path.

        The middleware passes ``request.scope["route"].path`` (``/tills/{till_id}/checkouts``);
        requests no route matched (404s from scanners) should pass ``route="unmatched"``.
        """
        method_label = method.upper() if method.upper() in _HTTP_METHODS else OTHER
        self.http_request_duration.labels(
            method=method_label, route=self._route(route), status=self._status(status)
        ).observe(max(seconds, 0.0))

    # -- exposition ---------------------------------------------------------------------------

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """Body and content type for ``/metrics``; OpenMetrics when ``accept`` asks for it."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


class _DatabaseCollector:
    """``vipps_pos_db_statements_total`` / ``vipps_pos_db_transactions_total`` of this process."""

    def __init__(self, counter: StatementCounter) -> None:
        self.counter = counter

    def collect(self) -> Iterable[CounterMetricFamily]:
        statements, transactions = self.counter.snapshot()
        yield CounterMetricFamily(
            "vipps_pos_db_statements",
            "Database statements this process sent (each is one round trip).",
            value=statements,
        )
        yield CounterMetricFamily(
            "vipps_pos_db_transactions",
            "Units of work this process committed (an autocommit write or BEGIN … COMMIT).",
            value=transactions,
        )
