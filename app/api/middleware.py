"""Per-request correlation and HTTP metrics as a plain ASGI middleware.

Starlette's ``BaseHTTPMiddleware`` (what ``@app.middleware("http")`` builds) runs every request
through an extra task and memory streams; on the webhook route that cost more CPU than the
route itself (benchmarks/README.md). This does the same work inline:

* binds the request id (``x-request-id`` in, or a new one) for every log line of the request
  and echoes it on the response;
* names the endpoint for the audit log while the request runs;
* observes ``method``/route template/status/seconds-to-headers in :class:`Metrics` for routed
  requests (unmatched paths are not counted, so scanners cannot grow the label set);
* marks every response ``X-Content-Type-Options: nosniff`` and, unless the route chose its own
  caching, ``Cache-Control: no-store`` — API answers carry keys (a new till's ``apiKey``), sales
  and personal data that no browser or proxy cache may keep.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import REQUEST_ID_SCOPE_KEY
from app.observability.logging import bind_request_id, clear_correlation
from app.observability.metrics import Metrics
from app.service.audit import audit_endpoint


class CorrelationMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = bind_request_id(Headers(scope=scope).get("x-request-id"))
        scope[REQUEST_ID_SCOPE_KEY] = request_id  # for the 500 handler, which runs outside
        started = time.perf_counter()
        method: str = scope["method"]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = request_id
                headers.setdefault("x-content-type-options", "nosniff")
                headers.setdefault("cache-control", "no-store")
                _observe(scope, method, message["status"], time.perf_counter() - started)
            await send(message)

        try:
            with audit_endpoint(f"{method} {scope['path']}"):
                await self.app(scope, receive, send_with_id)
        finally:
            clear_correlation()


def _observe(scope: Scope, method: str, status: int, seconds: float) -> None:
    route: Any = scope.get("route")
    app: Any = scope.get("app")
    metrics: Metrics | None = getattr(getattr(app, "state", None), "metrics", None)
    if metrics is not None and route is not None:
        metrics.observe_http_request(
            method=method,
            route=getattr(route, "path", "_unmatched"),
            status=status,
            seconds=seconds,
        )
