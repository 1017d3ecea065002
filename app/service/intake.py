"""Webhook intake and processing.

Intake (:meth:`WebhookIntake.receive`) is deliberately small so Vipps gets its 2xx fast:
verify the HMAC on the raw body against the MSN's stored secrets, insert into the inbox with a
unique key (a duplicate is acknowledged and dropped), queue it for processing. Deliveries that
arrive together are stored together: one statement and one durable commit per group, each
acknowledged only once its group is durable. The same statement matches each delivery to its
till or checkout: one that matches nothing is stored ``UNMATCHED``, and a signal that needs no
decision (``CREATED``, ``CAPTURED``, an unsuccessful event) is stored ``PROCESSED`` — neither
is processed again. A delivery that fails verification writes nothing. A verified delivery we
cannot understand is still stored (status ``FAILED``) and acknowledged — never dropped.

Processing (:meth:`WebhookIntake.process`) runs right after the 2xx on the replica that received
the event (a few lanes fed by a bounded queue), one event per transaction, so one bad event never
blocks the others. The inbox worker of any replica takes over what that replica has not
processed within :data:`INLINE_LEASE` (it died, restarted, or is too far behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import itertools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from app import repository as repo
from app.domain.state_machine import Event, EventKind
from app.domain.statuses import UNPROCESSED_INBOX, InboxStatus, RegistrationStatus
from app.models import InboxEvent
from app.persistence.records import InboxRecord
from app.persistence.store import Disposition, NewInboxEvent, StoredInboxEvent
from app.service.checkouts import CheckoutService
from app.service.context import ServiceContext
from app.service.crashpoints import crash_point
from app.service.errors import ServiceError
from app.vipps.signature import WebhookSignatureError, verify_webhook

log = structlog.get_logger("app.webhooks")

CHECKED_IN = "user.checked-in.v1"
# How long the inbox worker leaves a fresh event to the replica that received it.
INLINE_LEASE = timedelta(seconds=5)
# Events the receiving replica processes at once. Few on purpose: under a burst the intake (which
# only verifies and stores) keeps most of the event loop and Vipps gets its 2xx at once; the
# backlog is worked off right after. Beyond INLINE_BACKLOG queued events, or past the lease,
# the inbox workers of every replica share the rest.
INLINE_LANES = 8
INLINE_BACKLOG = 10_000
# How long a rotated-out registration's secret still verifies. Vipps retries a failed delivery
# with the secret it was signed with: about every 2 s four times, then after 60 s and 120 s, then
# hourly (REFERENCE.md §6.4) — an hour covers every retry of a delivery that was in flight.
RETIRED_SECRET_GRACE = timedelta(hours=1)
# Status of a registration row written just before the register call; it turns ACTIVE with the
# secret from Vipps's answer (see WebhookService).
REGISTERING = RegistrationStatus.REGISTERING
_REGISTERING_FOR_AT_MOST = timedelta(seconds=60)  # an older marker is a crashed registration
_REGISTERING_WAIT_SECONDS = 3.0  # well within the 10 s Vipps waits for an answer (§6.4)
_PAYMENT_EVENTS: dict[str, EventKind | None] = {
    "AUTHORIZED": EventKind.VIPPS_AUTHORIZED,
    "ABORTED": EventKind.VIPPS_ABORTED,
    "EXPIRED": EventKind.VIPPS_EXPIRED,
    "TERMINATED": EventKind.VIPPS_TERMINATED,
    "CANCELLED": EventKind.CANCEL_SUCCEEDED,
    # Signals only: the outbox records captures and refunds from Vipps's own answer (absolute
    # totals), so these just prompt a re-read instead of adding amounts twice.
    "CAPTURED": None,
    "REFUNDED": None,
    "CREATED": None,
}


class WebhookRejected(ServiceError):
    status, code, title = 401, "invalid_signature", "Webhook signature rejected"


class WebhookTooLarge(ServiceError):
    status, code, title = 413, "payload_too_large", "Webhook body too large"


@dataclass(frozen=True)
class IntakeResult:
    inbox_id: int | None
    duplicate: bool
    event_type: str


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    # Vipps sends up to 7 fractional digits; Python takes at most 6.
    if "." in text:
        head, _, rest = text.partition(".")
        # The fraction ends where the zone (+00:00) begins; the zone's digits are not part of it.
        digits = "".join(itertools.takewhile(str.isdigit, rest))
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


def classify(payload: Any) -> tuple[str, str | None]:
    """(event type, reference) from the payload; Vipps sends no event-type header."""
    if not isinstance(payload, dict):
        return "unknown", None
    if "customerToken" in payload and "merchantQrId" in payload:
        return CHECKED_IN, None
    name = payload.get("name")
    reference = payload.get("reference")
    if isinstance(name, str) and isinstance(reference, str):
        return f"epayments.payment.{name.lower()}.v1", reference
    return "unknown", None


# Longest event type and reference the inbox stores (webhook_inbox.event_type/reference).
_MAX_EVENT_TYPE = 64
_MAX_REFERENCE = 64


def _has_unstorable_text(payload: Any) -> bool:
    """Whether any key or string in ``payload`` holds a NUL or an unpaired surrogate (JSON allows
    both as escapes; Postgres text and UTF-8 hold neither). Iterative: nesting depth is the
    sender's to choose."""
    pending = [payload]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item or any("\ud800" <= ch <= "\udfff" for ch in item):
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def unprocessable_reason(event_type: str, reference: str | None, payload: Any) -> str | None:
    """Why a verified delivery that parsed cannot be processed (it is then stored raw, marked
    ``FAILED`` and acknowledged — never a 500), or ``None``."""
    if _has_unstorable_text(payload):
        return "payload holds a NUL or an unpaired surrogate (kept for inspection)"
    if len(event_type) > _MAX_EVENT_TYPE:
        return f"event name longer than {_MAX_EVENT_TYPE - len('epayments.payment..v1')} characters"
    if reference is not None and len(reference) > _MAX_REFERENCE:
        return f"reference longer than {_MAX_REFERENCE} characters"
    return None


def storable_text(body: bytes) -> str:
    """The raw body as text a database can hold: bytes that are not UTF-8, and NUL bytes, become
    U+FFFD (a body with either is not JSON, so nothing is lost that could be processed)."""
    return body.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def dedup_key(msn: str, event_type: str, payload: Any, body: bytes) -> str:
    if event_type.startswith("epayments.") and isinstance(payload, dict):
        # Vipps: key payment events on (reference, name, pspReference).
        parts = [msn, event_type, payload.get("reference"), payload.get("pspReference")]
        material = "|".join(str(p) for p in parts)
    else:
        material = msn + "|" + hashlib.sha256(body).hexdigest()
    return hashlib.sha256(material.encode()).hexdigest()


class WebhookIntake:
    def __init__(self, ctx: ServiceContext, checkouts: CheckoutService) -> None:
        self.ctx = ctx
        self.checkouts = checkouts
        self._secrets: dict[str, tuple[float, list[str]]] = {}
        # (stored event, context of the request that stored it); made on first use, in the loop
        self._queue: asyncio.Queue[tuple[Stored, contextvars.Context]] | None = None
        self._inserts = _GroupInsert(ctx)
        self._lanes: list[asyncio.Task[None]] = []
        self._closing = False
        self._reloaded_at: dict[str, float] = {}
        self._reload_locks: dict[str, asyncio.Lock] = {}
        self._registering: dict[str, bool] = {}

    def forget_secrets(self, msn: str | None = None) -> None:
        if msn is None:
            self._secrets.clear()
        else:
            self._secrets.pop(msn, None)

    async def secrets_for(self, msn: str, *, fresh: bool = False) -> list[str]:
        """Every secret valid for the MSN, cached for 30 s (``fresh`` re-reads).

        That is the active registration's and, during a rotation and for
        :data:`RETIRED_SECRET_GRACE` after it, the retired ones': Vipps may still deliver (and
        retry) events it signed with a registration deleted since (REFERENCE.md §6.2, §6.4).
        """
        cached = self._secrets.get(msn)
        if not fresh and cached and cached[0] > time.monotonic():
            return cached[1]
        return (await self._read_secrets(msn))[0]

    async def _read_secrets(self, msn: str) -> tuple[list[str], bool]:
        """(valid secrets, whether a registration is being made right now)."""
        async with self.ctx.sessions() as session:
            registrations = await repo.registrations_for_msn(session, msn)
        now = self.ctx.clock()
        secrets = [
            self.ctx.secrets.decrypt(r.secret_enc)
            for r in registrations
            if r.status != REGISTERING
            and (r.retired_at is None or now - r.retired_at < RETIRED_SECRET_GRACE)
        ]
        registering = any(
            r.status == REGISTERING and now - r.created_at < _REGISTERING_FOR_AT_MOST
            for r in registrations
        )
        self._secrets[msn] = (time.monotonic() + 30, secrets)
        self._registering[msn] = registering
        return secrets, registering

    async def _reread(self, msn: str, *, since: float) -> tuple[list[str], bool]:
        """Secrets as the database holds them at some moment after ``since`` (monotonic).

        Re-reads are coalesced per MSN — one at a time, at most one per 100 ms, and a read that
        started after ``since`` is shared — so a flood of forged deliveries costs at most ten
        queries a second, and a genuine delivery is never judged on secrets older than itself.
        """
        lock = self._reload_locks.setdefault(msn, asyncio.Lock())
        async with lock:
            started = self._reloaded_at.get(msn, 0.0)
            if started >= since and msn in self._secrets:
                return self._secrets[msn][1], self._registering.get(msn, False)
            pause = started + 0.1 - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            self._reloaded_at[msn] = time.monotonic()
            return await self._read_secrets(msn)

    async def _verified_secrets(
        self, msn: str, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> tuple[list[str], str | None]:
        """(secrets, why the delivery does not verify or ``None``), re-reading when it fails.

        Another process (a replica, the operator CLI rotating the registration) may have stored
        a new secret within the cache's lifetime, so a failure re-reads once. While a
        registration is being made, Vipps can deliver with its secret before we have stored it
        (the secret only comes in the register response): wait for it instead of rejecting.
        """
        arrived = time.monotonic()
        secrets = await self.secrets_for(msn)
        reason = self._rejection(secrets, msn, headers, body, now)
        if reason is None:
            return secrets, None
        secrets, registering = await self._reread(msn, since=arrived)
        reason = self._rejection(secrets, msn, headers, body, now)
        deadline = time.monotonic() + _REGISTERING_WAIT_SECONDS
        while reason is not None and registering and time.monotonic() < deadline:
            secrets, registering = await self._reread(msn, since=time.monotonic())
            reason = self._rejection(secrets, msn, headers, body, now)
        return secrets, reason

    def _rejection(
        self, secrets: list[str], msn: str, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> str | None:
        """Why the delivery does not verify against ``secrets``; ``None`` when it does."""
        if not secrets:
            return "no registration for MSN"
        settings = self.ctx.settings.webhooks
        try:
            verify_webhook(
                secrets,
                path_and_query=settings.path_and_query.rstrip("/") + f"/{msn}",
                host=settings.host,
                headers=headers,
                body=body,
                now=now,
                max_age=timedelta(seconds=settings.max_age_seconds),
            )
        except WebhookSignatureError as exc:
            return exc.reason
        return None

    def registered_url(self, msn: str) -> str:
        return f"{self.ctx.settings.webhooks.public_url.rstrip('/')}/{msn}"

    async def receive(self, msn: str, headers: Mapping[str, str], body: bytes) -> IntakeResult:
        settings = self.ctx.settings.webhooks
        if len(body) > settings.max_body_bytes:
            raise WebhookTooLarge(f"body exceeds {settings.max_body_bytes} bytes")
        now = self.ctx.clock()
        secrets, reason = await self._verified_secrets(msn, headers, body, now)
        if reason is not None:
            log.warning("vipps.webhook.rejected", msn=msn, reason=reason)
            if not secrets:
                raise WebhookRejected("no webhook registration for this sales unit")
            raise WebhookRejected(reason)
        try:
            payload: Any = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than json parses
            payload = None
        delivery = read_delivery(msn, payload, body)
        text = storable_text(body)
        encrypted = delivery.event_type == CHECKED_IN
        event = NewInboxEvent(
            dedup_key=dedup_key(msn, delivery.event_type, payload, body),
            msn=msn,
            event_type=delivery.event_type,
            reference=delivery.reference[:64] if delivery.reference else None,
            merchant_qr_id=delivery.merchant_qr_id,
            body=self.ctx.secrets.encrypt(text) if encrypted else text,
            body_encrypted=encrypted,
            event_time=delivery.event_time,
            disposition=delivery.disposition,
            outcome=delivery.outcome,
            last_error=(
                delivery.problem or "payload not understood (kept for inspection)"
                if delivery.disposition == "failed"
                else None
            ),
        )
        stored = await self._inserts.submit(event)
        if stored is not None:
            crash_point("webhook.after_inbox_commit")
        self.ctx.metrics.observe_webhook_received(
            event_type=delivery.event_type, msn=msn, received_at=now,
            vipps_timestamp=delivery.event_time,
        )  # fmt: skip
        if stored is None:
            log.info("vipps.webhook.duplicate", msn=msn, event_type=delivery.event_type)
            return IntakeResult(None, True, delivery.event_type)
        log.info(
            "vipps.webhook.received",
            msn=msn,
            event_type=delivery.event_type,
            inbox_id=stored.id,
            reference=delivery.reference,
            status=stored.status.value,
        )
        if stored.status is InboxStatus.PENDING and isinstance(payload, dict):
            self._process_soon(Stored(stored.id, msn, delivery.event_type, payload))
        return IntakeResult(stored.id, False, delivery.event_type)

    def _process_soon(self, event: Stored) -> None:
        """Queue the stored event for processing right away, after the 2xx is decided, without
        holding the response. The inbox row is the durable record: if this process dies first,
        or the queue is full, the inbox worker processes it once the lease has passed."""
        if self._closing:
            return  # shutting down: an inbox worker picks it up after the lease
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=INLINE_BACKLOG)
            # A lane belongs to no request: it must not keep the context (request id, audit
            # endpoint) of the request that happened to start it.
            self._lanes = [
                asyncio.create_task(
                    self._lane(self._queue),
                    name=f"inbox-inline-{n}",
                    context=contextvars.Context(),
                )
                for n in range(INLINE_LANES)
            ]
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait((event, contextvars.copy_context()))

    async def _lane(self, queue: asyncio.Queue[tuple[Stored, contextvars.Context]]) -> None:
        while True:
            event, context = await queue.get()
            try:
                # Each event runs in the context of the request that stored it, so its log lines
                # and audit entries name that request. Cancelling the lane cancels this too.
                await asyncio.create_task(self._process_inline(event), context=context)
            finally:
                queue.task_done()

    async def _process_inline(self, event: Stored) -> None:
        try:
            await self.process_stored(event)
        except Exception as exc:
            log.warning("inbox.event_failed", inbox_id=event.inbox_id, exc_info=True)
            try:
                await self.record_failure(event.inbox_id, exc)
            except Exception:  # the lease expires and the inbox worker retries it
                log.exception("inbox.record_failure_failed", inbox_id=event.inbox_id)

    async def aclose(self, grace: float = 5.0) -> None:
        """Let events being processed finish (each is one short transaction); after ``grace``
        seconds cancel the rest. Queued events not yet started stay PENDING for an inbox
        worker. Cancelling at once would abandon open database connections mid-transaction."""
        self._closing = True
        await self._inserts.aclose()
        queue, lanes = self._queue, self._lanes
        if queue is None:
            return
        while not queue.empty():
            queue.get_nowait()
            queue.task_done()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(queue.join(), grace)
        for task in lanes:
            task.cancel()
        for task in lanes:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---- processing ---------------------------------------------------------------------------

    async def list(
        self, *, statuses: list[str] | None = None, limit: int = 100
    ) -> list[InboxEvent]:
        async with self.ctx.sessions() as session:
            return list(await repo.list_inbox(session, statuses=statuses, limit=limit))

    def stored_of(self, record: InboxRecord) -> Stored:
        """A stored row as processing needs it (its body decrypted and parsed)."""
        text = self.ctx.secrets.decrypt(record.body) if record.body_encrypted else record.body
        payload = json.loads(text)
        if not isinstance(payload, dict):  # pragma: no cover (stored as PENDING only if one)
            raise ValueError("payload is not an object")
        return Stored(record.id, record.msn or "", record.event_type, payload)

    async def process(self, inbox_id: int) -> str:
        """Process one stored event (an operator's retry, or a test); returns the outcome."""
        async with self.ctx.sessions() as session:
            row = await session.get(InboxEvent, inbox_id)
        if row is None or row.status not in UNPROCESSED_INBOX:
            return "skipped"
        record = InboxRecord(
            row.id, row.msn, row.event_type, row.reference, row.body, row.body_encrypted,
            row.status, row.attempts, row.received_at,
        )  # fmt: skip
        return await self.process_stored(self.stored_of(record))

    async def process_stored(self, event: Stored) -> str:
        """Apply one stored event (its own load and save); returns the outcome label.

        Safe to run twice — the receiving replica and, after the lease, an inbox worker may both
        get here: the second finds the event processed (or the till moved on) and stops.
        """
        payload = event.payload
        if event.event_type == CHECKED_IN:
            qr_id, token = payload.get("merchantQrId"), payload.get("customerToken")
            if not isinstance(qr_id, str) or not isinstance(token, str) or not token:
                outcome, checkout_id = "unmatched", None
                await self.checkouts.finish_inbox(
                    event.inbox_id, InboxStatus.UNMATCHED, outcome, None
                )
            else:
                received = self.ctx.clock()
                initiated = _parse_time(payload.get("initiatedAt")) or received
                outcome, checkout_id = await self.checkouts.process_checkin(
                    event.inbox_id,
                    msn=event.msn,
                    merchant_qr_id=qr_id,
                    token_enc=self.ctx.secrets.encrypt(token),
                    initiated_at=initiated,
                )
        else:
            outcome, checkout_id = await self._payment_event(event)
        log.info(
            "vipps.webhook.processed",
            inbox_id=event.inbox_id,
            event_type=event.event_type,
            outcome=outcome,
            checkout_id=checkout_id,
        )
        return outcome

    async def record_failure(self, inbox_id: int, error: BaseException) -> None:
        """Keep a failed event for inspection and retry it later with backoff."""
        delay = await self.ctx.store.fail_inbox(
            inbox_id,
            f"{type(error).__name__}: {str(error)[:500]}",
            self.ctx.clock(),
            base_seconds=self.ctx.settings.workers.inbox_retry_seconds,
            cap_seconds=300.0,
        )
        log.warning(
            "vipps.webhook.processing_failed",
            inbox_id=inbox_id,
            error=type(error).__name__,
            retry_in_seconds=delay,
        )

    async def _payment_event(self, event: Stored) -> tuple[str, str | None]:
        payload = event.payload
        reference = payload.get("reference")
        name = str(payload.get("name", "")).upper()
        if not isinstance(reference, str) or not event.msn:
            await self.checkouts.finish_inbox(
                event.inbox_id, InboxStatus.UNMATCHED, "unmatched", None
            )
            return "unmatched", None
        kind = _PAYMENT_EVENTS.get(name)
        if payload.get("success") is False or kind is None:
            # A signal (stored before signals were settled on arrival, or retried after a
            # failure): nothing to decide; the reconciler's schedule still polls the payment.
            outcome = "unsuccessful_ignored" if payload.get("success") is False else "signal"
            await self.checkouts.finish_inbox(event.inbox_id, InboxStatus.PROCESSED, outcome, None)
            return outcome, None
        amount = payload.get("amount", {})
        value = amount.get("value") if isinstance(amount, dict) else None
        value = value if isinstance(value, int) and not isinstance(value, bool) else None
        return await self.checkouts.process_payment_event(
            event.inbox_id,
            msn=event.msn,
            reference=reference,
            name=name,
            event=Event(kind, amount=value),
        )


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored delivery, parsed: what processing needs, without reading the row again."""

    inbox_id: int
    msn: str
    event_type: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a verified body says, and how the inbox files it (see ``Disposition``)."""

    event_type: str
    reference: str | None
    merchant_qr_id: str | None
    event_time: datetime | None
    disposition: Disposition
    outcome: str | None
    problem: str | None = None  # why a delivery filed ``failed`` cannot be processed


def read_delivery(msn: str, payload: Any, body: bytes) -> Delivery:
    """Classify a verified delivery. Vipps sends no event-type header: the payload says it.

    One that cannot be processed (see :func:`unprocessable_reason`) is filed ``failed`` as
    type ``unknown``, so nothing of it reaches a column that cannot hold it."""
    event_type, reference = classify(payload)
    problem = unprocessable_reason(event_type, reference, payload)
    if problem is not None:
        return Delivery("unknown", None, None, None, "failed", None, problem)
    if not isinstance(payload, dict) or event_type == "unknown":
        return Delivery(event_type, None, None, None, "failed", None)
    event_time = _parse_time(payload.get("initiatedAt") or payload.get("timestamp"))
    payload_msn = payload.get("msn") or payload.get("merchantSerialNumber")
    if payload_msn not in (None, msn):
        return Delivery(event_type, reference, None, event_time, "failed", None)
    if event_type == CHECKED_IN:
        qr_id = payload.get("merchantQrId")
        return Delivery(
            event_type, None, qr_id if isinstance(qr_id, str) else "", event_time, "decide", None
        )
    name = str(payload.get("name", "")).upper()
    if payload.get("success") is False:
        return Delivery(event_type, reference, None, event_time, "settle", "unsuccessful_ignored")
    if _PAYMENT_EVENTS.get(name) is not None:
        return Delivery(event_type, reference, None, event_time, "decide", None)
    # CAPTURED/REFUNDED may report money moved outside our outbox: an active checkout is polled
    # now. CREATED only confirms what the outbox records from the create call's own answer, and
    # the regular schedule still polls the payment (first poll ~5 s after the request, §7.11).
    disposition: Disposition = "settle" if name == "CREATED" else "nudge"
    return Delivery(event_type, reference, None, event_time, disposition, "signal")


class _GroupInsert:
    """Stores deliveries in groups: one statement and one durable commit for all the deliveries
    that arrived while the previous group was being written (group commit). Each delivery's
    request waits for the commit of its own group, so nothing is acknowledged before it is
    durable; under light load a group is one delivery and nothing waits."""

    MAX_GROUP = 200

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self._waiting: list[tuple[NewInboxEvent, asyncio.Future[StoredInboxEvent | None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, event: NewInboxEvent) -> StoredInboxEvent | None:
        """Store ``event``; ``None`` if it was stored before (a duplicate delivery)."""
        future: asyncio.Future[StoredInboxEvent | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((event, future))
        if self._writer is None:
            self._writer = asyncio.create_task(
                self._write_groups(), name="inbox-group-insert", context=contextvars.Context()
            )
        return await asyncio.shield(future)

    async def _write_groups(self) -> None:
        try:
            while self._waiting:
                group = self._waiting[: self.MAX_GROUP]
                del self._waiting[: self.MAX_GROUP]
                now = self.ctx.clock()
                try:
                    stored = await self.ctx.store.store_inbox(
                        [event for event, _ in group], now, now + INLINE_LEASE
                    )
                except BaseException as exc:
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                by_key = {row.dedup_key: row for row in stored}
                for event, future in group:
                    # The first of two identical deliveries in one group is the stored one.
                    if not future.done():
                        future.set_result(by_key.pop(event.dedup_key, None))
        finally:
            self._writer = None

    async def aclose(self) -> None:
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(Exception):
                await writer
