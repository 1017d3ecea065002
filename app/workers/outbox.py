"""The outbox dispatcher: performs the Vipps calls that committed decisions asked for.

Invariants:

* A command is claimed as a lease; a worker that dies mid-call leaves it to be reclaimed when the
  lease expires, and the retry sends the **same** ``Idempotency-Key`` and body, so Vipps returns
  the original outcome instead of acting twice.
* When an attempt's outcome is unknown (timeout after sending, connection dropped), the next
  attempt asks Vipps first (GET the payment) and only re-sends if the effect is not there. A
  create, capture or refund whose GET fails is re-sent with the same key and body, which Vipps
  answers with the original outcome (REFERENCE.md §7.10).
* Commands of one checkout run in order (see ``CLAIM_OUTBOX`` in :mod:`app.persistence.postgres`).
* At most 5 calls per minute per payment reference **and operation** (Vipps's limit, REFERENCE.md
  §7.11: create, capture, cancel and refund each have their own): each call's time is recorded on
  the checkout under its operation, and a command that would exceed its operation's budget waits
  (:mod:`app.domain.call_budget`).
* A dispatch reads nothing first: what a call needs travels with the command (its payload, and
  from its checkout the customer token and the recent call stamps). Recording the answer is one
  load and one save of the checkout, like any other decision.
* No lock is held during a call: the claim commits before, the result is recorded after.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import structlog

from app.domain.call_budget import RATE_LIMIT_CALLS, RATE_LIMIT_WINDOW, recorded_calls
from app.domain.state_machine import CommandKind, Event, EventKind
from app.domain.statuses import OutboxStatus
from app.persistence.records import CommandOutcome, CommandRecord
from app.service.checkouts import CheckoutService
from app.service.context import ServiceContext
from app.service.crashpoints import crash_point
from app.service.sync import event_from_details, totals, with_totals
from app.vipps.client import VippsClient
from app.vipps.errors import (
    VippsAuthError,
    VippsConflict,
    VippsError,
    VippsNotFound,
    VippsOutcomeUnknown,
    VippsRejected,
    VippsUnavailable,
)
from app.vipps.schemas import (
    Aggregate,
    Amount,
    CreatePaymentRequest,
    ModificationResponse,
    PaymentDetails,
)

log = structlog.get_logger("app.outbox")

# Retries of money-moving calls are already spaced by the 5-per-minute limit per reference;
# a longer backoff would only leave a refund or capture waiting after Vipps has recovered.
MAX_BACKOFF_SECONDS = 15.0
_MUTATING = frozenset({"CREATE_PAYMENT", "CAPTURE", "CANCEL", "REFUND"})


@dataclass(frozen=True)
class Result:
    """What to record once the call is over."""

    status: Literal["DONE", "FAILED", "RETRY"]
    event: Event | None = None
    retry_in: float = 0.0
    outcome_unknown: bool = False
    error: str | None = None
    detail: dict[str, Any] | None = None
    failure_code: str | None = None


@dataclass(frozen=True)
class _MoneyMove:
    """What differs between a capture and a refund."""

    before_key: str  # payload key: Vipps's total when the command was decided
    total: Callable[[Aggregate], int]
    succeeded: EventKind
    failed: EventKind


CAPTURE = _MoneyMove(
    "capturedBefore",
    lambda aggregate: aggregate.captured_amount.value,
    EventKind.CAPTURE_SUCCEEDED,
    EventKind.CAPTURE_FAILED,
)
REFUND = _MoneyMove(
    "refundedBefore",
    lambda aggregate: aggregate.refunded_amount.value,
    EventKind.REFUND_SUCCEEDED,
    EventKind.REFUND_FAILED,
)


def _budget_key(command: CommandRecord) -> str:
    return f"{command.msn}:{command.reference}:{command.kind.value}"


def _reason(error: VippsError) -> str:
    code = f" {error.error_code}" if error.error_code else ""
    return f"Vipps{code}: {error.title or error.detail or 'refused'}"[:500]


def _failure_code(error: VippsRejected) -> str:
    """The code a refusal is recorded under: Vipps's error code, else ``rejected`` (a stable code
    of the till contract). Never empty: the reconciler re-requests an auto capture only while no
    failure is recorded, so a refusal without a code must not look like a lost decision (it
    would be re-sent on every pass)."""
    return error.error_code or "rejected"


class OutboxWorker:
    def __init__(
        self,
        ctx: ServiceContext,
        checkouts: CheckoutService,
        vipps: VippsClient,
        *,
        club: Any | None = None,
    ) -> None:
        # ``vipps`` is a client without internal retries: this worker owns the retry schedule,
        # so every attempt is visible to the rate limit and recorded.
        self.ctx = ctx
        self.checkouts = checkouts
        self.vipps = vipps
        self.club = club
        self._calls: dict[str, deque[float]] = {}
        self._inflight: set[int] = set()
        self._direct: set[asyncio.Task[None]] = set()
        # As many hand-offs at once as the claim loops could have in flight.
        settings = ctx.settings.workers
        self._direct_room = asyncio.Semaphore(
            settings.outbox_concurrency * settings.outbox_batch_size
        )

    # ---- direct hand-off ----------------------------------------------------------------------

    def dispatch_soon(self, commands: Sequence[CommandRecord]) -> None:
        """Send commands claimed by the transaction that decided them (see
        ``CheckoutService._queue``), without a claim round trip or a wake-up of the loop. Each
        runs in a fresh context, as the claim loops' dispatches do: recording its result is not
        part of the request that decided it (audit entries would otherwise name that request)."""
        for command in commands:
            task = asyncio.create_task(
                self._dispatch_handed_off(command),
                name=f"outbox-{command.id}",
                context=contextvars.Context(),
            )
            self._direct.add(task)
            task.add_done_callback(self._direct.discard)

    async def _dispatch_handed_off(self, command: CommandRecord) -> None:
        async with self._direct_room:
            await self.dispatch(command)

    async def aclose(self, grace: float = 5.0) -> None:
        """Let hand-offs under way finish and be recorded — including commands they decide in
        turn (a finished token exchange queues the create-payment), which are still handed off —
        for up to ``grace`` seconds; then stop taking hand-offs and cancel the rest. A cancelled
        or never-sent command is ``IN_FLIGHT`` with a lease: a claim loop retries it after the
        lease with the same key."""
        deadline = asyncio.get_running_loop().time() + grace
        pending = set(self._direct)
        while pending:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            await asyncio.wait(pending, timeout=remaining)
            pending = set(self._direct)
        if self.ctx.dispatch_soon == self.dispatch_soon:
            self.ctx.dispatch_soon = None
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---- loop ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.ctx.settings.workers
        # The loop runs here, so commands decided in this process can be handed over directly.
        self.ctx.dispatch_soon = self.dispatch_soon
        while not stop.is_set():
            # Cleared before the claim, not after: a wake-up for a command committed while the
            # claim ran stays set, so it is not left waiting for the next poll.
            self.ctx.hub.outbox_wakeup.clear()
            try:
                handled = await self.run_once()
            except Exception:  # keep the worker alive; the error is logged, the lease expires
                log.exception("outbox.loop_error")
                handled = 0
            if handled:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.ctx.hub.outbox_wakeup.wait(), settings.outbox_poll_interval_seconds
                )

    async def run_once(self) -> int:
        settings = self.ctx.settings.workers
        claimed = await self.ctx.store.claim_outbox(
            self.ctx.clock(),
            timedelta(seconds=settings.outbox_lease_seconds),
            settings.outbox_batch_size,
        )
        if not claimed:
            return 0
        await asyncio.gather(*(self.dispatch(command) for command in claimed))
        return len(claimed)

    # ---- one command --------------------------------------------------------------------------

    async def dispatch(self, command: CommandRecord) -> None:
        if command.id in self._inflight:
            return
        self._inflight.add(command.id)
        try:
            if not command.checkout_found:
                log.error("outbox.checkout_missing", command_id=command.id)
                await self._record(command, Result("FAILED", error="checkout no longer exists"))
                return
            wait, stamp = self._rate_limit_wait(command)
            if wait > 0:
                await self._record(command, Result("RETRY", retry_in=wait, error="rate limited"))
                return
            started = time.monotonic()
            crash_point("outbox.before_call", command.kind.value)
            try:
                result = await self._perform(command)
            except VippsOutcomeUnknown as exc:
                result = self._retry(command, exc, unknown=True)
            except VippsUnavailable as exc:
                result = self._retry(command, exc, unknown=command.outcome_unknown)
            except VippsAuthError as exc:
                log.error("outbox.vipps_auth_failed", command_id=command.id, error=str(exc))
                result = self._retry(command, exc, unknown=command.outcome_unknown, floor=30.0)
            log.info(
                "outbox.dispatched",
                command_id=command.id,
                kind=command.kind.value,
                checkout_id=command.checkout_id,
                attempt=command.attempts,
                status=result.status,
                seconds=round(time.monotonic() - started, 4),
            )
            if stamp is not None:
                stamp = self._stamp_call_end(command, stamp)
            crash_point("outbox.after_call", command.kind.value)
            await self._record(command, result, call_stamp=stamp)
        except Exception:
            log.exception("outbox.dispatch_error", command_id=command.id, kind=command.kind.value)
        finally:
            self._inflight.discard(command.id)

    def _retry(
        self, command: CommandRecord, error: VippsError, *, unknown: bool, floor: float = 0.0
    ) -> Result:
        backoff = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** max(0, command.attempts - 1))
        retry_after = getattr(error, "retry_after", None)
        delay = max(floor, backoff, retry_after or 0.0)
        return Result("RETRY", retry_in=delay, outcome_unknown=unknown, error=str(error)[:500])

    def _rate_limit_wait(self, command: CommandRecord) -> tuple[float, float | None]:
        """Seconds to wait before this call may go out, and the call's stamp if it may now.

        The budget is per reference and operation: Vipps lists create, capture, cancel and
        refund as separate rows of 5 per minute each (REFERENCE.md §7.11), so three refunds
        after a capture do not hold a fourth refund back. Every attempt counts, refused ones
        and repeats with the same Idempotency-Key included: the limit's key is reference + MSN,
        not the idempotency key. Stamps of recorded calls travel with the command (from its
        checkout, as of its claim or decision); calls this process has made but not yet recorded
        are in ``self._calls`` under the same stamp, so none is counted twice.
        """
        if command.kind.value not in _MUTATING:
            return 0.0, None
        now = time.time()
        recorded = [
            t
            for t in recorded_calls(command.mutating_calls, command.kind.value)
            if now - t < RATE_LIMIT_WINDOW
        ]
        local = self._calls.setdefault(_budget_key(command), deque(maxlen=RATE_LIMIT_CALLS * 2))
        while local and now - local[0] >= RATE_LIMIT_WINDOW:
            local.popleft()
        recent = sorted(set(recorded) | set(local))
        if len(recent) >= RATE_LIMIT_CALLS:
            return recent[-RATE_LIMIT_CALLS] + RATE_LIMIT_WINDOW - now + 0.05, None
        local.append(now)
        return 0.0, now

    def _stamp_call_end(self, command: CommandRecord, sent: float) -> float:
        """Re-stamp a mutating call with the time its attempt ended.

        Vipps counts a call when it arrives, which is anywhere between our send and its answer —
        an attempt may first spend up to a read timeout asking for the payment. The limit check
        runs at the next send, so stamping the *end* of each attempt keeps Vipps's own one-minute
        window at 5 calls or fewer (a stamp taken before the attempt let a 6th call arrive 59 s
        after the first: the provider-faults soak, docs/RELIABILITY.md F7).
        """
        ended = time.time()
        local = self._calls.get(_budget_key(command))
        if local is not None and sent in local:
            local.remove(sent)
            local.append(ended)
        return ended

    async def _perform(self, command: CommandRecord) -> Result:
        kind = command.kind
        assert command.checkout_id is not None  # dispatch fails commands without a checkout
        match kind:
            case CommandKind.CREATE_PAYMENT:
                return await self._create(command)
            case CommandKind.CAPTURE:
                return await self._move_money(command, CAPTURE)
            case CommandKind.CANCEL:
                return await self._cancel(command)
            case CommandKind.REFUND:
                return await self._move_money(command, REFUND)
            case CommandKind.EXCHANGE_TOKEN:
                if self.club is None:
                    event = Event(EventKind.IDENTIFY_FINISHED, reason="customer club not set up")
                    return Result("DONE", event=event)
                checkout = await self.checkouts.get(None, command.checkout_id)
                result: Result = await self.club.identify(command, checkout)
                return result
            case _:  # pragma: no cover (every CommandKind has its case above)
                raise AssertionError(f"unhandled command {kind}")

    async def _payment(self, command: CommandRecord) -> PaymentDetails | None:
        assert command.reference is not None
        try:
            return await self.vipps.get_payment(command.msn, command.reference)
        except VippsNotFound:
            return None

    async def _create(self, command: CommandRecord) -> Result:
        if command.outcome_unknown:
            # Did the earlier attempt create it? Ask before sending again. If Vipps cannot be
            # asked, send again with the same key and body: Vipps answers with the original
            # outcome (REFERENCE.md §7.10), and a conflict is not taken as a refusal (below).
            try:
                details = await self._payment(command)
            except VippsUnavailable:
                details = None
            if details is not None:
                return Result(
                    "DONE", event=event_from_details(details) or Event(EventKind.PAYMENT_CREATED)
                )
        if not command.customer_token_enc:
            event = Event(EventKind.PAYMENT_CREATE_REFUSED, reason="no customer token")
            return Result("FAILED", event=event, failure_code="no_customer_token")
        if (
            command.customer_token_expires_at
            and command.customer_token_expires_at <= self.ctx.clock()
        ):
            event = Event(EventKind.PAYMENT_CREATE_REFUSED, reason="customer token expired")
            return Result("FAILED", event=event, failure_code="customer_token_expired")
        body = dict(command.payload["body"])
        body["customer"] = {"customerToken": self.ctx.secrets.decrypt(command.customer_token_enc)}
        request = CreatePaymentRequest.model_validate(body)
        try:
            await self.vipps.create_payment(command.msn, request, command.idempotency_key)
        except VippsRejected as exc:
            if command.outcome_unknown and isinstance(exc, VippsConflict):
                # "Reference already exists" after an attempt whose outcome we never learned:
                # that attempt created it. Not a refusal — find out with a GET next attempt.
                return self._retry(command, exc, unknown=True)
            event = Event(EventKind.PAYMENT_CREATE_REFUSED, reason=_reason(exc))
            return Result(
                "FAILED", event=event, error=_reason(exc), failure_code=_failure_code(exc)
            )
        if command.scanned_at is not None and command.store_id is not None:
            self.ctx.metrics.observe_scan_to_payment_request(
                store=command.store_id,
                seconds=(self.ctx.clock() - command.scanned_at).total_seconds(),
            )
        return Result("DONE", event=Event(EventKind.PAYMENT_CREATED))

    def _amount(self, command: CommandRecord) -> Amount:
        return Amount(currency=command.payload["currency"], value=int(command.payload["amount"]))

    async def _move_money(self, command: CommandRecord, move: _MoneyMove) -> Result:
        """Capture or refund ``payload.amount``. Safe to repeat: same key, same body.

        After an unknown outcome, Vipps's aggregate is compared with what it was when the command
        was decided (``payload.<before>``): if the money already moved, it is not sent again.
        """
        amount = self._amount(command)
        assert command.reference is not None
        if command.outcome_unknown:
            try:
                details = await self._payment(command)
            except VippsUnavailable:
                # Cannot ask right now: send again with the same key and body, which Vipps
                # answers with the original outcome instead of moving money twice (REFERENCE.md
                # §7.10: "retry with the same key or GET the payment first"). Waiting for a
                # successful GET instead doubled each attempt's exposure to an outage and let a
                # capture miss its sale by minutes at a 50 % fault rate (docs/RELIABILITY.md F6).
                details = None
            before = int(command.payload.get(move.before_key, 0))
            if details and move.total(details.aggregate) >= before + amount.value:
                return Result("DONE", event=with_totals(move.succeeded, details.aggregate))
        call = self.vipps.capture_payment if move is CAPTURE else self.vipps.refund_payment
        try:
            response = await call(command.msn, command.reference, amount, command.idempotency_key)
        except VippsRejected as exc:
            event = Event(move.failed, amount=amount.value, reason=_reason(exc))
            return Result(
                "FAILED", event=event, error=_reason(exc), failure_code=_failure_code(exc)
            )
        return self._modified(move.succeeded, response)

    def _modified(self, kind: EventKind, response: ModificationResponse) -> Result:
        return Result("DONE", event=with_totals(kind, response.aggregate))

    async def _cancel(self, command: CommandRecord) -> Result:
        assert command.reference is not None
        only_pending = bool(command.payload.get("cancelTransactionOnly"))
        try:
            response = await self.vipps.cancel_payment(
                command.msn,
                command.reference,
                command.idempotency_key,
                cancel_transaction_only=only_pending,
            )
        except VippsRejected as exc:
            if only_pending and exc.error_code == "6060":
                # The customer approved before our cancel arrived (REFERENCE.md §7.6).
                event = Event(EventKind.CANCEL_REFUSED_ALREADY_AUTHORIZED)
                return Result("DONE", event=event, error=_reason(exc))
            details = await self._payment(command)
            if details is not None and details.state in ("ABORTED", "EXPIRED", "TERMINATED"):
                return Result("DONE", event=event_from_details(details))
            event = Event(EventKind.CANCEL_FAILED, reason=_reason(exc))
            return Result(
                "FAILED", event=event, error=_reason(exc), failure_code=_failure_code(exc)
            )
        if response.state == "TERMINATED":
            cancelled = totals(response.aggregate)["cancelled_total"]
            return Result(
                "DONE",
                event=Event(EventKind.VIPPS_TERMINATED, cancelled_total=cancelled),
            )
        return self._modified(EventKind.CANCEL_SUCCEEDED, response)

    # ---- recording ----------------------------------------------------------------------------

    async def _record(
        self, command: CommandRecord, result: Result, *, call_stamp: float | None = None
    ) -> None:
        now = self.ctx.clock()
        if result.status == "RETRY":
            outcome = CommandOutcome(
                command.id,
                OutboxStatus.PENDING,
                result.error,
                next_attempt_at=now + timedelta(seconds=result.retry_in),
                outcome_unknown=result.outcome_unknown,
            )
        else:
            outcome = CommandOutcome(
                command.id,
                OutboxStatus(result.status),
                result.error,
                result=result.detail
                or {"event": result.event.kind.value if result.event else None},
            )
        await self.checkouts.record_command(
            command,
            outcome,
            result.event,
            failure_code=result.failure_code,
            call_stamp=call_stamp,
        )
