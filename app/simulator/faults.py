"""Fault injection: what a flaky network and a struggling Vipps do to a client.

Rules are matched per call on the operation name (the spec's ``operationId``, e.g.
``capturePayment``) or a path glob, optionally a method, and fire with a probability drawn from a
seedable RNG, at most ``times`` times. HTTP kinds:

* ``latency`` — sleep ``latencyMs`` and go on (several latency rules add up);
* ``error`` — answer ``status`` (500, 502, 503, 429 with ``Retry-After``, 423) without running
  the operation;
* ``reset`` — drop the connection before the operation runs;
* ``hang`` — never answer: wait until the client gives up (or ``hangSeconds``), then drop;
* ``drop_response`` — run the operation (the effect is committed) and drop the connection instead
  of answering: the case idempotency keys exist for.

Webhook kinds (matched on the event type glob ``event``): ``webhook_duplicate`` (deliver twice),
``webhook_reorder`` (deliver late, outside the per-payment order), ``webhook_delay`` (deliver late,
order kept). Pausing delivery is a dispatcher switch, not a rule.

A dropped connection is a real TCP abort under uvicorn. In-process under ``httpx.ASGITransport``
there is no socket, so the layer raises :class:`httpx.RemoteProtocolError` — the error httpx
raises when a server disconnects without a response — which ASGITransport passes to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import itertools
import random
import re
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

import httpx
import orjson

from app.simulator.models import LedgerEntry
from app.simulator.problems import epayment_problem, gateway_error

if TYPE_CHECKING:
    from app.simulator.engine import Simulator

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

FaultKind = Literal[
    "latency",
    "error",
    "reset",
    "hang",
    "drop_response",
    "webhook_duplicate",
    "webhook_reorder",
    "webhook_delay",
]
HTTP_KINDS = frozenset({"latency", "error", "reset", "hang", "drop_response"})
ERROR_STATUSES = frozenset({500, 502, 503, 429, 423})

# (method, path regex, operation name): operationIds of the official specs where they exist.
_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (method, re.compile(pattern), name)
    for method, pattern, name in (
        ("POST", r"^/accesstoken/get$", "fetchAuthorizationTokenUsingPost"),
        ("GET", r"^/qr/v1/merchant-callback$", "GetMerchantCallbackQrs"),
        ("GET", r"^/qr/v1/merchant-callback/[^/]+$", "GetMerchantCallbackById"),
        ("PUT", r"^/qr/v1/merchant-callback/[^/]+$", "PutMerchantCallbackQr"),
        ("DELETE", r"^/qr/v1/merchant-callback/[^/]+$", "DeleteMerchantCallbackQr"),
        ("POST", r"^/qr/v1/exchange/customer$", "exchangeCustomer"),
        ("GET", r"^/qr/generate/[^/]+$", "qrImage"),
        ("POST", r"^/epayment/v1/payments$", "createPayment"),
        ("GET", r"^/epayment/v1/payments/[^/]+$", "getPayment"),
        ("GET", r"^/epayment/v1/payments/[^/]+/events$", "getPaymentEventLog"),
        ("POST", r"^/epayment/v1/payments/[^/]+/capture$", "capturePayment"),
        ("POST", r"^/epayment/v1/payments/[^/]+/cancel$", "cancelPayment"),
        ("POST", r"^/epayment/v1/payments/[^/]+/refund$", "refundPayment"),
        ("POST", r"^/epayment/v1/test/payments/[^/]+/approve$", "forceApprove"),
        ("POST", r"^/webhooks/v1/webhooks$", "registerWebhook"),
        ("GET", r"^/webhooks/v1/webhooks$", "getWebhooks"),
        ("DELETE", r"^/webhooks/v1/webhooks/[^/]+$", "deleteWebhook"),
        (
            "GET",
            r"^/access-management-1\.0/access/\.well-known/openid-configuration$",
            "discoverOpenIDConfiguration",
        ),
        ("POST", r"^/access-management-1\.0/access/oauth2/token$", "oauth2Token"),
        ("POST", r"^/vipps-login-ciba/api/backchannel/authentication$", "cibaAuthentication"),
        ("GET", r"^/vipps-userinfo-api/userinfo$", "userinfo"),
    )
)
OPERATIONS = tuple(sorted({name for _, _, name in _ROUTES}))


def classify(method: str, path: str) -> str | None:
    """The operation name of a request, or ``None`` for paths the simulator does not serve."""
    for route_method, pattern, name in _ROUTES:
        if route_method == method and pattern.match(path):
            return name
    return None


_collector: ContextVar[list[LedgerEntry] | None] = ContextVar("sim_ledger_collector", default=None)


def note_ledger_entry(entry: LedgerEntry) -> None:
    """Called by the engine for every ledger entry, so a ``drop_response`` can mark its own."""
    collected = _collector.get()
    if collected is not None:
        collected.append(entry)


class FaultSpecError(ValueError):
    """A fault rule that cannot be honoured (unknown kind, bad status, probability > 1...)."""


@dataclass
class FaultRule:
    id: str
    kind: FaultKind
    operation: str | None = None
    path: str | None = None
    method: str | None = None
    event: str | None = None
    probability: float = 1.0
    times: int | None = None
    status: int = 500
    retry_after: int = 1
    latency_ms: float = 0.0
    hang_seconds: float = 30.0
    delay_seconds: float = 0.5
    fired: int = 0

    @classmethod
    def from_json(cls, rule_id: str, body: dict[str, Any]) -> FaultRule:
        kind = body.get("kind")
        if kind not in get_args(FaultKind):
            raise FaultSpecError(f"kind must be one of {', '.join(get_args(FaultKind))}")
        probability = float(body.get("probability", 1.0))
        if not 0.0 <= probability <= 1.0:
            raise FaultSpecError("probability must be between 0 and 1")
        times = body.get("times")
        if times is not None and (not isinstance(times, int) or times < 1):
            raise FaultSpecError("times must be a positive integer")
        status = int(body.get("status", 500))
        if kind == "error" and status not in ERROR_STATUSES:
            raise FaultSpecError(f"status must be one of {sorted(ERROR_STATUSES)}")
        operation = body.get("operation")
        if operation is not None and operation not in OPERATIONS:
            raise FaultSpecError(f"unknown operation {operation}; known: {', '.join(OPERATIONS)}")
        method = body.get("method")
        return cls(
            id=rule_id,
            kind=cast(FaultKind, kind),
            operation=operation,
            path=body.get("path"),
            method=method.upper() if isinstance(method, str) else None,
            event=body.get("event"),
            probability=probability,
            times=times,
            status=status,
            retry_after=int(body.get("retryAfter", 1)),
            latency_ms=float(body.get("latencyMs", 0.0)),
            hang_seconds=float(body.get("hangSeconds", 30.0)),
            delay_seconds=float(body.get("delaySeconds", 0.5)),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "operation": self.operation,
            "path": self.path,
            "method": self.method,
            "event": self.event,
            "probability": self.probability,
            "times": self.times,
            "status": self.status,
            "retryAfter": self.retry_after,
            "latencyMs": self.latency_ms,
            "hangSeconds": self.hang_seconds,
            "delaySeconds": self.delay_seconds,
            "fired": self.fired,
        }

    def matches_http(self, method: str, path: str, operation: str | None) -> bool:
        if self.kind not in HTTP_KINDS:
            return False
        if self.method is not None and self.method != method:
            return False
        if self.operation is not None and self.operation != operation:
            return False
        return self.path is None or fnmatch.fnmatchcase(path, self.path)

    def matches_event(self, event: str) -> bool:
        if self.kind in HTTP_KINDS:
            return False
        return self.event is None or fnmatch.fnmatchcase(event, self.event)


class FaultInjector:
    """The active rules and the RNG that decides whether a probabilistic rule fires."""

    def __init__(self, seed: int | None = None) -> None:
        self.rules: list[FaultRule] = []
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)

    def seed(self, seed: int | None) -> None:
        self._rng = random.Random(seed)

    def add(self, body: dict[str, Any]) -> FaultRule:
        rule = FaultRule.from_json(f"fault-{next(self._ids)}", body)
        self.rules.append(rule)
        return rule

    def remove(self, rule_id: str) -> bool:
        before = len(self.rules)
        self.rules = [rule for rule in self.rules if rule.id != rule_id]
        return len(self.rules) != before

    def clear(self) -> None:
        self.rules.clear()

    def _fires(self, rule: FaultRule) -> bool:
        if rule.times is not None and rule.fired >= rule.times:
            return False
        if rule.probability < 1.0 and self._rng.random() >= rule.probability:
            return False
        rule.fired += 1
        return True

    def http_plan(
        self, method: str, path: str, operation: str | None
    ) -> tuple[float, FaultRule | None]:
        """Summed latency (s) of the firing latency rules, and the first other rule that fires."""
        latency = 0.0
        terminal: FaultRule | None = None
        for rule in self.rules:
            if not rule.matches_http(method, path, operation):
                continue
            if rule.kind == "latency":
                if self._fires(rule):
                    latency += rule.latency_ms / 1000.0
            elif terminal is None and self._fires(rule):
                terminal = rule
        return latency, terminal

    def webhook_plan(self, event: str) -> list[FaultRule]:
        return [rule for rule in self.rules if rule.matches_event(event) and self._fires(rule)]


class FaultLayer:
    """Outermost ASGI layer: strict-mode request checks and HTTP faults. ``/_sim/`` is exempt.

    With no rules and strict mode off it adds one attribute read and one comparison per request.
    """

    def __init__(self, app: ASGIApp, simulator: Simulator) -> None:
        self.app = app
        self.simulator = simulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        simulator = self.simulator
        if scope["type"] != "http" or (not simulator.faults.rules and not simulator.strict):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith("/_sim"):
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if simulator.strict:
            body = await _read_body(receive)
            receive = _replay(body, receive)
            simulator.check_request(method, path, headers, body)
        operation = classify(method, path)
        latency, rule = simulator.faults.http_plan(method, path, operation)
        if latency:
            await asyncio.sleep(latency)
        if rule is None:
            await self.app(scope, receive, send)
            return
        if rule.kind == "error":
            simulator.record_fault(operation, path, f"error:{rule.status}", rule.status, headers)
            await _send_error(send, rule, simulator)
        elif rule.kind == "reset":
            simulator.record_fault(operation, path, "reset", 0, headers)
            await _drop_connection(scope, receive)
        elif rule.kind == "hang":
            simulator.record_fault(operation, path, "hang", 0, headers)
            await _hang(receive, rule.hang_seconds)
            await _drop_connection(scope, receive)
        else:  # drop_response: commit the effect, lose the answer
            collected: list[LedgerEntry] = []
            token = _collector.set(collected)
            try:
                await self.app(scope, receive, _swallow)
            finally:
                _collector.reset(token)
            for entry in collected:
                entry.response_dropped = True
                entry.fault = "drop_response"
            await _drop_connection(scope, receive)


async def _swallow(message: Message) -> None:
    return None


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(send: Send, rule: FaultRule, simulator: Simulator) -> None:
    headers: dict[str, str] = {}
    if rule.status in (429, 503):
        headers["Retry-After"] = str(rule.retry_after)
    if rule.status == 429:
        error = gateway_error(
            429,
            f"Rate limit is exceeded. Try again in {rule.retry_after} seconds.",
            style=simulator.config.gateway_error_style,
            headers=headers,
        )
    elif rule.status == 423:
        error = epayment_problem(423, "The payment is locked by another operation; retry shortly")
    else:
        error = epayment_problem(rule.status, "Simulated failure", headers=headers)
    body = orjson.dumps(error.body)
    raw_headers = [
        (b"content-type", error.media_type.encode()),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in {**error.headers, **headers}.items()),
    ]
    await send({"type": "http.response.start", "status": rule.status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def _hang(receive: Receive, seconds: float) -> None:
    """Wait for the client to disconnect (its timeout), at most ``seconds``."""

    async def until_disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(until_disconnect(), timeout=seconds)


async def _drop_connection(scope: Scope, receive: Receive) -> None:
    """Abort the TCP connection under uvicorn; raise what httpx would raise when in-process."""
    cycle = getattr(receive, "__self__", None)
    transport = getattr(cycle, "transport", None)
    # uvicorn's transports: asyncio's or uvloop's (which do not subclass asyncio.Transport).
    abort = getattr(transport, "abort", None)
    if callable(abort):
        abort()
        # Let the protocol see connection_lost before uvicorn looks at the response state.
        for _ in range(3):
            await asyncio.sleep(0)
        return
    host, port = scope.get("server") or ("testserver", None)
    authority = host if port is None else f"{host}:{port}"
    url = f"{scope.get('scheme', 'http')}://{authority}{scope['path']}"
    raise httpx.RemoteProtocolError(
        "Server disconnected without sending a response.",
        request=httpx.Request(scope["method"], url),
    )
