"""Signed webhook delivery, as Vipps MobilePay does it (REFERENCE.md §6.3, §6.4).

* Every delivery is an HTTP POST of the JSON event, signed with the registration's secret over the
  *registered* URL's path+query and authority (:func:`app.vipps.signature.sign_webhook`); each
  attempt is signed afresh with its own ``x-ms-date``.
* A non-2xx answer or a transport error is retried after each delay of the configured schedule;
  after the last one the event is dropped (Vipps gives up after 7 days).
* Order is kept per registration and payment: a failing event blocks later events of the same
  payment until it is delivered or dropped. Check-ins have no such order.
* Fault rules may duplicate, delay (order kept) or reorder (sent late, outside the order) a
  delivery; :meth:`WebhookDispatcher.pause` holds every delivery until :meth:`resume`.

All work happens in asyncio tasks on the loop that emitted the event; :meth:`drain` waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import orjson

from app.simulator.clock import Clock
from app.simulator.config import SimulatorConfig
from app.simulator.faults import FaultInjector
from app.simulator.models import WebhookRegistration, iso_millis
from app.vipps.signature import format_ms_date, sign_webhook

_DEFAULT_PORTS = {"http": 80, "https": 443}


def signing_target(url: str) -> tuple[str, str]:
    """``(path_and_query, host)`` of a registered URL, as in JS ``URL``: no default port."""
    parts = urlsplit(url)
    path_and_query = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    hostname = parts.hostname or ""
    if ":" in hostname:
        hostname = f"[{hostname}]"
    port = parts.port
    host = (
        hostname
        if port is None or port == _DEFAULT_PORTS.get(parts.scheme)
        else f"{hostname}:{port}"
    )
    return path_and_query, host


@dataclass
class DeliveryAttempt:
    at: str
    status_code: int | None
    error: str | None
    duration_ms: float
    sent_epoch: float = 0.0  # when the POST left, epoch seconds (latency measurements)


@dataclass
class Delivery:
    id: str
    registration_id: str
    url: str
    secret: str
    event: str
    msn: str
    reference: str | None
    body: bytes
    created_at: str
    ordering: str | None
    status: Literal["pending", "delivered", "dropped"] = "pending"
    attempts: list[DeliveryAttempt] = field(default_factory=list)
    delay: float = 0.0
    reorder_delay: float | None = None
    duplicate: bool = False
    duplicate_of: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "registrationId": self.registration_id,
            "url": self.url,
            "event": self.event,
            "msn": self.msn,
            "reference": self.reference,
            "payload": orjson.loads(self.body),
            "status": self.status,
            "createdAt": self.created_at,
            "attempts": [
                {
                    "at": a.at,
                    "statusCode": a.status_code,
                    "error": a.error,
                    "durationMs": a.duration_ms,
                    "sentAtEpoch": a.sent_epoch,
                }
                for a in self.attempts
            ],
            "duplicateOf": self.duplicate_of,
            "reordered": self.reorder_delay is not None,
            "delayedSeconds": self.delay,
            "headers": self.headers,
        }


class WebhookDispatcher:
    """Queues per (registration, payment), one worker task per non-empty queue."""

    def __init__(self, config: SimulatorConfig, clock: Clock, faults: FaultInjector) -> None:
        self.config = config
        self.clock = clock
        self.faults = faults
        self.log: list[Delivery] = []
        self._queues: dict[str, deque[Delivery]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._loose: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._paused = False
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._transport = config.webhook_transport
        self._client: httpx.AsyncClient | None = None

    # ------------------------------------------------------------------ controls

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        self._paused = True
        self._resumed.clear()

    def resume(self) -> None:
        self._paused = False
        self._resumed.set()
        self._kick_all()

    def set_transport(self, transport: httpx.AsyncBaseTransport | None) -> None:
        """Deliver through ``transport`` from now on (e.g. ``httpx.ASGITransport(service_app)``)."""
        self._transport = transport
        self._client = None

    def pending(self) -> int:
        return sum(len(queue) for queue in self._queues.values()) + len(self._loose)

    async def drain(self, within: float = 5.0) -> bool:
        """Wait until nothing is pending; ``False`` if ``within`` real seconds passed first."""
        self._kick_all()
        deadline = time.monotonic() + within
        while self.pending():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.002)
        return True

    def reset(self) -> None:
        for task in [*self._workers.values(), *self._loose]:
            task.cancel()
        self._workers.clear()
        self._loose.clear()
        self._queues.clear()
        self.log.clear()
        self.resume()

    async def aclose(self) -> None:
        tasks = [*self._workers.values(), *self._loose]
        self.reset()
        for task in tasks:
            # Cancelled workers end with CancelledError.
            with contextlib.suppress(BaseException):
                await task
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ------------------------------------------------------------------ emitting

    def enqueue(
        self,
        registration: WebhookRegistration,
        event: str,
        payload: dict[str, Any],
        *,
        ordering: str | None,
    ) -> Delivery:
        """Record a delivery and schedule it; returns at once (delivery is asynchronous)."""
        delivery = Delivery(
            id=f"dlv-{next(self._ids)}",
            registration_id=registration.id,
            url=registration.url,
            secret=registration.secret,
            event=event,
            msn=str(payload.get("msn", "")),
            reference=payload.get("reference"),
            body=orjson.dumps(payload),
            created_at=iso_millis(self.clock.now()),
            ordering=ordering,
        )
        for rule in self.faults.webhook_plan(event):
            if rule.kind == "webhook_duplicate":
                delivery.duplicate = True
            elif rule.kind == "webhook_delay":
                delivery.delay = rule.delay_seconds
            elif rule.kind == "webhook_reorder":
                delivery.reorder_delay = rule.delay_seconds
        self.log.append(delivery)
        if delivery.reorder_delay is not None:
            self._spawn_loose(delivery)
        else:
            key = f"{registration.id}/{ordering or delivery.id}"
            self._queues.setdefault(key, deque()).append(delivery)
            self._kick(key)
        return delivery

    def _kick(self, key: str) -> None:
        if key in self._workers:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: drain() or the next enqueue starts it
        self._workers[key] = loop.create_task(self._run_queue(key))

    def _kick_all(self) -> None:
        for key in list(self._queues):
            self._kick(key)

    def _spawn_loose(self, delivery: Delivery) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._run_loose(delivery))
        self._loose.add(task)
        task.add_done_callback(self._loose.discard)

    async def _run_loose(self, delivery: Delivery) -> None:
        await asyncio.sleep(delivery.reorder_delay or 0.0)
        await self._deliver(delivery)

    async def _run_queue(self, key: str) -> None:
        queue = self._queues.get(key)
        try:
            while queue:
                delivery = queue[0]
                await self._deliver(delivery)
                queue.popleft()
                if delivery.duplicate and delivery.status == "delivered":
                    queue.appendleft(self._copy(delivery))
        finally:
            self._workers.pop(key, None)
            if queue is not None and not queue and self._queues.get(key) is queue:
                del self._queues[key]

    def _copy(self, original: Delivery) -> Delivery:
        copy = Delivery(
            id=f"dlv-{next(self._ids)}",
            registration_id=original.registration_id,
            url=original.url,
            secret=original.secret,
            event=original.event,
            msn=original.msn,
            reference=original.reference,
            body=original.body,
            created_at=iso_millis(self.clock.now()),
            ordering=original.ordering,
            duplicate_of=original.id,
        )
        self.log.append(copy)
        return copy

    # ------------------------------------------------------------------ sending

    async def _deliver(self, delivery: Delivery) -> None:
        if delivery.delay:
            await asyncio.sleep(delivery.delay)
        schedule = self.config.webhook_retry_delays
        for attempt in range(len(schedule) + 1):
            await self._resumed.wait()
            if await self._attempt(delivery):
                delivery.status = "delivered"
                return
            if attempt < len(schedule):
                await asyncio.sleep(schedule[attempt])
        delivery.status = "dropped"

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport, timeout=self.config.webhook_timeout_seconds
            )
        return self._client

    async def _attempt(self, delivery: Delivery) -> bool:
        path_and_query, host = signing_target(delivery.url)
        moment = self.clock.now() if self.config.webhook_dates_from_clock else datetime.now(UTC)
        headers = sign_webhook(
            delivery.secret,
            path_and_query=path_and_query,
            host=host,
            body=delivery.body,
            ms_date=format_ms_date(moment),
        )
        headers["Content-Type"] = "application/json"
        delivery.headers = headers
        sent_epoch = time.time()
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            response = await self._http().post(delivery.url, content=delivery.body, headers=headers)
            status = response.status_code
        except Exception as exc:  # any failure of the receiver counts as "not delivered"
            error = f"{type(exc).__name__}: {exc}"
        delivery.attempts.append(
            DeliveryAttempt(
                at=iso_millis(self.clock.now()),
                status_code=status,
                error=error,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                sent_epoch=sent_epoch,
            )
        )
        return status is not None and 200 <= status < 300
