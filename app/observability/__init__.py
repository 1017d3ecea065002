"""Logs, metrics and PII masking: the building blocks the app, workers and tests share.

- :mod:`app.observability.pii` — what counts as PII, how it is masked, and a scanner for tests.
- :mod:`app.observability.logging` — structlog + stdlib in one masked JSON/console pipeline,
  with request and checkout correlation ids.
- :mod:`app.observability.metrics` — Prometheus metrics on a per-app registry, cardinality
  bounded independently of the number of tills.
"""

from app.observability.logging import (
    bind_checkout_id,
    bind_request_id,
    bound_correlation,
    clear_correlation,
    configure_logging,
    get_logger,
)
from app.observability.metrics import Metrics, QueueStats
from app.observability.pii import find_pii, mask_phone, mask_text, redact

__all__ = [
    "Metrics",
    "QueueStats",
    "bind_checkout_id",
    "bind_request_id",
    "bound_correlation",
    "clear_correlation",
    "configure_logging",
    "find_pii",
    "get_logger",
    "mask_phone",
    "mask_text",
    "redact",
]
