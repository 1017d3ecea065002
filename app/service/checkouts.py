"""The checkout orchestrator: loads a checkout under its till's lock, asks the state machine,
persists the new state and the Vipps calls it implies (outbox rows) in one transaction.

Atomic phases (DESIGN.md §3): nothing here calls Vipps. State, ``reference`` and each command's
``Idempotency-Key`` are committed first; the outbox worker makes the call outside any lock and
feeds the result back through :meth:`CheckoutService.apply`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError

from app import repository as repo
from app.domain.receipt import check_checkout, normalize_receipt
from app.domain.state_machine import (
    CapturePolicy,
    CheckoutFacts,
    CheckoutState,
    Command,
    CommandKind,
    Decision,
    Event,
    EventKind,
    InvalidTransition,
    LateApprovalPolicy,
    Outcome,
    decide,
)
from app.models import Checkout, CheckoutChange, IdempotentRequest, OutboxCommand, Till
from app.notifications import checkout_key, till_key, wait_any
from app.service.audit import append_audit
from app.service.context import ServiceContext, Work, unit_of_work
from app.service.crashpoints import crash_point
from app.service.errors import (
    ActiveCheckoutExists,
    CheckoutNotFound,
    IdempotencyKeyReused,
    InvalidCheckout,
    TillInactive,
    TransitionRefused,
    vipps_errors_as_problems,
)
from app.service.sync import repair_events
from app.vipps.errors import VippsNotFound

log = structlog.get_logger("app.checkout")

_REFERENCE_SAFE = re.compile(r"[^a-zA-Z0-9-]")


@dataclass(frozen=True)
class CreateCheckout:
    amount: int
    currency: str
    receipt: dict[str, Any] | None
    description: str | None
    capture_mode: CapturePolicy


@dataclass(frozen=True)
class CreateResult:
    checkout: Checkout
    replayed: bool


def request_hash(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_reference(till_id: str) -> str:
    """Unique per MSN, ``^[a-zA-Z0-9-]{8,50}$`` (ePayment 1.4.1), prefixed with the till.

    Kept ≤ 30 characters so idempotency keys derived from it stay within Vipps's 50.
    """
    prefix = _REFERENCE_SAFE.sub("-", till_id)[:16].strip("-") or "till"
    return f"{prefix}-{secrets.token_hex(6)}"


@dataclass(frozen=True)
class InFlight:
    """Vipps calls decided but not finished, from the outbox: the only source of "pending"."""

    capture: int = 0
    refund: int = 0
    cancel: bool = False

    @classmethod
    def of(cls, commands: Sequence[OutboxCommand]) -> InFlight:
        def amount(command: OutboxCommand) -> int:
            return int(command.payload.get("amount") or 0)

        return cls(
            capture=sum(amount(c) for c in commands if c.kind == CommandKind.CAPTURE.value),
            refund=sum(amount(c) for c in commands if c.kind == CommandKind.REFUND.value),
            cancel=any(c.kind == CommandKind.CANCEL.value for c in commands),
        )


def facts_of(
    checkout: Checkout,
    ctx: ServiceContext,
    *,
    club_step: bool,
    hold: bool,
    in_flight: InFlight,
) -> CheckoutFacts:
    return CheckoutFacts(
        state=CheckoutState(checkout.state),
        amount=checkout.amount_value,
        capture_mode=CapturePolicy(checkout.capture_mode),
        authorized=checkout.authorized_value,
        captured=checkout.captured_value,
        refunded=checkout.refunded_value,
        cancelled=checkout.cancelled_value,
        capture_pending=in_flight.capture,
        refund_pending=in_flight.refund,
        cancel_pending=in_flight.cancel,
        club_step=club_step,
        member_price_hold=hold,
        late_approval=LateApprovalPolicy(ctx.settings.checkout.cancel_after_approval),
    )


_IDEMPOTENCY_SUFFIX = {
    CommandKind.EXCHANGE_TOKEN: "exchange",
    CommandKind.CREATE_PAYMENT: "create",
    CommandKind.CAPTURE: "capture",
    CommandKind.CANCEL: "cancel",
    CommandKind.REFUND: "refund",
}


class CheckoutService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    # ---- the one place decisions are applied --------------------------------------------------

    async def _store_policy(self, work: Work, checkout: Checkout) -> tuple[bool, bool, int]:
        """(club step, member-price hold, hold seconds) of the checkout's store."""
        store = await repo.get_store(work.session, checkout.store_id)
        if store is None:
            return False, False, 0
        # A member price is for members: a customer the club step did not identify pays at once.
        hold = bool(store.member_price_hold) and checkout.member_id is not None
        return store.club_policy != "off", hold, store.member_price_hold_seconds

    async def apply_locked(
        self, work: Work, checkout: Checkout, event: Event, *, actor: str
    ) -> Decision:
        """Decide and persist. The caller holds the till's lock (see :func:`repo.lock_till`)."""
        club_step, hold, hold_seconds = await self._store_policy(work, checkout)
        await work.session.flush()  # outbox rows finished in this transaction count as finished
        unfinished = await repo.pending_commands(work.session, checkout.id)
        in_flight = InFlight.of(unfinished)
        facts = facts_of(checkout, self.ctx, club_step=club_step, hold=hold, in_flight=in_flight)
        try:
            decision = decide(facts, event)
        except InvalidTransition as exc:
            raise TransitionRefused(exc.code, exc.detail, checkout.state) from exc
        await self._persist(
            work,
            checkout,
            facts,
            event,
            decision,
            actor=actor,
            hold_seconds=hold_seconds,
            first_in_line=not unfinished,
        )
        return decision

    async def _persist(
        self,
        work: Work,
        checkout: Checkout,
        facts: CheckoutFacts,
        event: Event,
        decision: Decision,
        *,
        actor: str,
        hold_seconds: int = 0,
        first_in_line: bool = False,
    ) -> None:
        now = self.ctx.clock()
        previous = checkout.state
        bookkeeping = {
            "authorized_value": decision.authorized,
            "captured_value": decision.captured,
            "refunded_value": decision.refunded,
            "cancelled_value": decision.cancelled,
            # A cache of the outbox for readers (the API): what is on its way to Vipps.
            "capture_pending_value": facts.capture_pending
            + sum(c.amount or 0 for c in decision.commands if c.kind is CommandKind.CAPTURE),
            "refund_pending_value": facts.refund_pending
            + sum(c.amount or 0 for c in decision.commands if c.kind is CommandKind.REFUND),
        }
        money_changed = False
        for column, value in bookkeeping.items():
            if value is not None and getattr(checkout, column) != value:
                setattr(checkout, column, value)
                money_changed = True
        if decision.capture_mode is not None:
            checkout.capture_mode = decision.capture_mode.value
        if event.kind is EventKind.PAYMENT_CREATED and checkout.vipps_state is None:
            # The push is on the customer's phone now: worth telling the till.
            checkout.vipps_state = "CREATED"
            money_changed = True
        state_changed = decision.state.value != previous
        if state_changed:
            checkout.state = decision.state.value
            self._stamp(checkout, decision.state, now, hold_seconds)
        if decision.note and (
            decision.outcome is Outcome.ANOMALY or decision.state in (CheckoutState.FAILED,)
        ):
            checkout.failure_detail = decision.note
        for index, command in enumerate(decision.commands):
            # Only a command with nothing before it in the checkout's line may be sent at once
            # (commands of a checkout run in order; see repository.claim_outbox).
            await self._queue(work, checkout, command, now, claim=first_in_line and index == 0)
        if not (state_changed or money_changed or decision.commands):
            return
        checkout.version += 1
        checkout.updated_at = now
        log.info(
            "checkout.transition",
            checkout_id=checkout.id,
            till_id=checkout.till_id,
            trigger=event.kind.value,
            from_state=previous,
            to_state=checkout.state,
            outcome=decision.outcome.value,
            commands=[c.kind.value for c in decision.commands],
        )
        work.session.add(
            CheckoutChange(
                till_id=checkout.till_id,
                checkout_id=checkout.id,
                kind="checkout.updated",
                state=checkout.state,
                data={"version": checkout.version, "event": event.kind.value},
                at=now,
            )
        )
        await append_audit(
            work.session,
            at=now,
            actor=actor,
            action=event.kind.value.lower(),
            till_id=checkout.till_id,
            checkout_id=checkout.id,
            # "All that is left" requests carry no amount; the queued command says what it is.
            amount_value=event.amount
            if event.amount is not None
            else next((c.amount for c in decision.commands if c.amount is not None), None),
            detail={"from": previous, "to": checkout.state, "outcome": decision.outcome.value},
        )
        await work.announce(checkout.till_id, checkout.id)
        if state_changed and decision.state.is_final:
            self.ctx.metrics.count_checkout_finished(store=checkout.store_id, state=checkout.state)
        requested_at = checkout.payment_requested_at
        if state_changed and decision.state is CheckoutState.AUTHORIZED and requested_at:
            self.ctx.metrics.observe_payment_request_to_authorization(
                store=checkout.store_id,
                seconds=(now - requested_at).total_seconds(),
            )

    def _stamp(
        self, checkout: Checkout, state: CheckoutState, now: datetime, hold_seconds: int = 0
    ) -> None:
        first_poll = timedelta(seconds=self.ctx.settings.workers.reconcile_first_poll_seconds)
        match state:
            case CheckoutState.PAYMENT_REQUESTED:
                checkout.payment_requested_at = now
                checkout.next_poll_at = now + first_poll
                checkout.poll_count = 0
            case CheckoutState.CANCELLING | CheckoutState.AUTHORIZED:
                checkout.next_poll_at = now + first_poll
                if state is CheckoutState.AUTHORIZED:
                    checkout.authorized_at = checkout.authorized_at or now
            case CheckoutState.AWAITING_POS_UPDATE:
                # The store's hold, but never past the moment the payment must go out for the
                # customer token (15 minutes from the scan) to still be valid.
                deadline = now + timedelta(seconds=hold_seconds)
                if checkout.customer_token_expires_at is not None:
                    margin = self.ctx.settings.checkout.payment_request_margin_seconds
                    latest = checkout.customer_token_expires_at - timedelta(seconds=margin)
                    deadline = min(deadline, max(now, latest))
                checkout.pos_update_deadline = deadline
            case CheckoutState.IDENTIFYING | CheckoutState.AWAITING_SCAN:
                pass
            case (
                CheckoutState.CAPTURED
                | CheckoutState.PARTIALLY_REFUNDED
                | CheckoutState.REFUNDED
                | CheckoutState.CANCELLED
                | CheckoutState.REJECTED
                | CheckoutState.EXPIRED
                | CheckoutState.FAILED
            ):
                checkout.finished_at = checkout.finished_at or now
                checkout.next_poll_at = None
                # The customer token is useless now; do not keep it.
                checkout.customer_token_enc = None

    async def _queue(
        self, work: Work, checkout: Checkout, command: Command, now: datetime, *, claim: bool
    ) -> None:
        """Add the command to the outbox, in the deciding transaction.

        With ``claim`` (and an outbox running in this process) the row is written already claimed
        — ``IN_FLIGHT`` with a lease, as :func:`repository.claim_outbox` would leave it — and is
        dispatched right after the commit. If this process dies before the call is recorded, the
        lease expires and any replica's claim loop retries it with the same ``Idempotency-Key``.
        """
        suffix = _IDEMPOTENCY_SUFFIX[command.kind]
        if command.kind is CommandKind.CREATE_PAYMENT:
            key = f"{checkout.reference}-{suffix}"
            payload: dict[str, Any] = {"body": self._create_payment_body(checkout)}
        else:
            n = await repo.count_outbox_kind(work.session, checkout.id, command.kind.value) + 1
            key = f"{checkout.reference}-{suffix}-{n}"
            payload = {
                "amount": command.amount,
                "currency": checkout.currency,
                "cancelTransactionOnly": command.cancel_transaction_only,
                # What Vipps should show once this call took effect; lets a retry after an
                # unknown outcome ask Vipps first instead of guessing.
                "capturedBefore": checkout.captured_value,
                "refundedBefore": checkout.refunded_value,
            }
        claim = claim and self.ctx.dispatch_soon is not None
        lease = timedelta(seconds=self.ctx.settings.workers.outbox_lease_seconds)
        row = OutboxCommand(
            checkout_id=checkout.id,
            till_id=checkout.till_id,
            kind=command.kind.value,
            msn=checkout.msn,
            reference=checkout.reference,
            idempotency_key=key,
            payload=payload,
            status="IN_FLIGHT" if claim else "PENDING",
            attempts=1 if claim else 0,
            outcome_unknown=False,
            lease_until=now + lease if claim else None,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
        work.session.add(row)
        if claim:
            work.dispatch_now.append(row)
        else:
            work.outbox_added = True

    def _create_payment_body(self, checkout: Checkout) -> dict[str, Any]:
        """The create-payment body, frozen at decision time so every retry sends the same bytes.

        The customer token is not in it: it is stored encrypted on the checkout and added by the
        outbox worker at send time.
        """
        vipps = self.ctx.settings.vipps
        body: dict[str, Any] = {
            "amount": {"currency": checkout.currency, "value": checkout.amount_value},
            "paymentMethod": {"type": "WALLET"},
            # In-store payments must say the customer is present (REFERENCE.md §7.1).
            "customerInteraction": "CUSTOMER_PRESENT",
            "userFlow": vipps.user_flow.value,
            "reference": checkout.reference,
            "paymentDescription": checkout.description,
            "metadata": {"tillId": checkout.till_id[:500], "checkoutId": checkout.id},
        }
        if vipps.user_flow.value == "WEB_REDIRECT":
            body["returnUrl"] = f"{vipps.return_url}?reference={checkout.reference}"
        if checkout.receipt:
            body["receipt"] = checkout.receipt
        return body

    # ---- POS operations -----------------------------------------------------------------------

    async def create(
        self, till_id: str, request: CreateCheckout, idempotency_key: str | None, raw_body: Any
    ) -> CreateResult:
        description = request.description or "Purchase"
        check = check_checkout(
            request.amount, request.currency, request.receipt, description=description
        )
        if not check.ok:
            raise InvalidCheckout(list(check.errors))
        body_hash = request_hash(raw_body)
        now = self.ctx.clock()
        try:
            async with unit_of_work(self.ctx) as work:
                till = await repo.lock_till(work.session, till_id)
                if till is None:
                    raise CheckoutNotFound(f"till {till_id} not found")
                if idempotency_key:
                    existing = await repo.get_checkout_by_create_key(
                        work.session, till_id, idempotency_key
                    )
                    if existing is not None:
                        if existing.create_request_hash != body_hash:
                            raise IdempotencyKeyReused()
                        return CreateResult(existing, replayed=True)
                if till.status != "ACTIVE":
                    raise TillInactive(till_id)
                active = await repo.active_checkout(work.session, till_id)
                if active is not None:
                    raise ActiveCheckoutExists(active.id, active.state)
                receipt = (
                    normalize_receipt(request.receipt, currency=request.currency, pos_id=till.id)
                    if request.receipt
                    else None
                )
                checkout = Checkout(
                    id=str(uuid.uuid4()),
                    till_id=till.id,
                    store_id=till.store_id,
                    msn=till.msn,
                    state=CheckoutState.AWAITING_SCAN.value,
                    amount_value=request.amount,
                    original_amount_value=request.amount,
                    currency=request.currency,
                    receipt=receipt or {},
                    warnings=[asdict(w) for w in check.warnings],
                    description=description,
                    capture_mode=request.capture_mode.value,
                    reference=new_reference(till.id),
                    create_key=idempotency_key,
                    create_request_hash=body_hash,
                    created_at=now,
                    updated_at=now,
                    expires_at=now
                    + timedelta(seconds=self.ctx.settings.checkout.awaiting_scan_timeout_seconds),
                    version=1,
                    authorized_value=0,
                    captured_value=0,
                    refunded_value=0,
                    cancelled_value=0,
                    capture_pending_value=0,
                    refund_pending_value=0,
                    poll_count=0,
                    mutating_calls=[],
                )
                work.session.add(checkout)
                work.session.add(
                    CheckoutChange(
                        till_id=till.id,
                        checkout_id=checkout.id,
                        kind="checkout.created",
                        state=checkout.state,
                        data={"version": 1},
                        at=now,
                    )
                )
                await append_audit(
                    work.session,
                    at=now,
                    actor=f"till:{till.api_key_id}",
                    action="checkout.create",
                    till_id=till.id,
                    checkout_id=checkout.id,
                    amount_value=request.amount,
                    detail={"currency": request.currency, "captureMode": request.capture_mode},
                )
                await work.announce(till.id, checkout.id)
                await work.session.flush()
                # Scan first, basket second: a waiting check-in with enough token life left
                # becomes this checkout's customer.
                await self._attach_waiting_checkin(work, till, checkout, now)
                log.info(
                    "checkout.created",
                    checkout_id=checkout.id,
                    till_id=till.id,
                    amount=request.amount,
                    currency=request.currency,
                    state=checkout.state,
                )
                return CreateResult(checkout, replayed=False)
        except IntegrityError as exc:
            # The partial unique index or the idempotency constraint caught a race the lock
            # did not (e.g. a till row created concurrently). Report what is there now.
            async with self.ctx.sessions() as session:
                if idempotency_key:
                    existing = await repo.get_checkout_by_create_key(
                        session, till_id, idempotency_key
                    )
                    if existing is not None and existing.create_request_hash == body_hash:
                        return CreateResult(existing, replayed=True)
                active = await repo.active_checkout(session, till_id)
            if active is not None:
                raise ActiveCheckoutExists(active.id, active.state) from exc
            raise

    async def _attach_waiting_checkin(
        self, work: Work, till: Till, checkout: Checkout, now: datetime
    ) -> None:
        margin = timedelta(seconds=self.ctx.settings.checkout.payment_request_margin_seconds)
        checkin = await repo.waiting_checkin(work.session, till.id, now + margin)
        if checkin is None:
            return
        checkin.status = "USED"
        checkin.checkout_id = checkout.id
        checkout.customer_token_enc = checkin.customer_token_enc
        checkout.customer_token_expires_at = checkin.expires_at
        checkout.scanned_at = checkin.initiated_at
        await self.apply_locked(
            work, checkout, Event(EventKind.CUSTOMER_SCANNED), actor="vipps:user.checked-in"
        )

    async def get(self, till_id: str | None, checkout_id: str) -> Checkout:
        async with self.ctx.sessions() as session:
            checkout = await repo.get_checkout(session, checkout_id)
        if checkout is None or (till_id is not None and checkout.till_id != till_id):
            raise CheckoutNotFound(checkout_id)
        return checkout

    async def wait_for_change(
        self,
        till_id: str | None,
        checkout_id: str,
        *,
        after_version: int | None,
        wait: float,
        stop: asyncio.Event | None = None,
    ) -> Checkout:
        """Long-poll: return once the checkout's version differs from ``after_version`` (or the
        version seen on arrival), when ``wait`` seconds have passed, or at once when ``stop``
        is set (the caller's credential was revoked: it re-checks before answering)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(wait, self.ctx.settings.checkout.max_wait_seconds)
        event = self.ctx.hub.event_for(checkout_key(checkout_id))
        checkout = await self.get(till_id, checkout_id)
        baseline = after_version if after_version is not None else checkout.version
        while checkout.version == baseline:
            remaining = deadline - loop.time()
            if remaining <= 0 or not await wait_any(event, stop, within=remaining):
                break
            if stop is not None and stop.is_set():
                break
            event = self.ctx.hub.event_for(checkout_key(checkout_id))
            checkout = await self.get(till_id, checkout_id)
        return checkout

    async def _settled(
        self,
        scope: str | None,
        checkout_id: str,
        done: Callable[[Checkout, InFlight], bool],
    ) -> Checkout:
        """Wait (at most ``max_wait_seconds``) until ``done`` holds for the checkout and the Vipps
        calls still in flight for it; return the checkout as it then is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ctx.settings.checkout.max_wait_seconds
        while True:
            event = self.ctx.hub.event_for(checkout_key(checkout_id))
            async with self.ctx.sessions() as session:
                # Outbox first: a call finished by then is in the checkout read after it (the
                # result and the command's status commit together).
                in_flight = InFlight.of(await repo.pending_commands(session, checkout_id))
                checkout = await repo.get_checkout(session, checkout_id)
            if checkout is None or (scope is not None and checkout.till_id != scope):
                raise CheckoutNotFound(checkout_id)
            remaining = deadline - loop.time()
            if done(checkout, in_flight) or remaining <= 0:
                return checkout
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=min(remaining, 1.0))

    async def active(self, till_id: str) -> Checkout | None:
        async with self.ctx.sessions() as session:
            return await repo.active_checkout(session, till_id)

    async def apply(self, checkout_id: str, event: Event, *, actor: str) -> Decision | None:
        """Apply an event from a worker or webhook; ``None`` if the checkout does not exist."""
        async with unit_of_work(self.ctx) as work:
            checkout = await repo.get_checkout(work.session, checkout_id)
            if checkout is None:
                return None
            await repo.lock_till(work.session, checkout.till_id)
            checkout = await repo.get_checkout(work.session, checkout_id)
            assert checkout is not None
            return await self.apply_locked(work, checkout, event, actor=actor)

    async def _pos_command(
        self,
        scope: str | None,
        checkout_id: str,
        event: Event,
        *,
        action: str,
        idempotency_key: str | None,
        body: Any,
        actor: str,
    ) -> tuple[Checkout, bool]:
        """Apply a till's request once per Idempotency-Key. Returns (checkout, replayed)."""
        key_scope = f"checkout:{checkout_id}:{action}"
        digest = request_hash(body)
        async with unit_of_work(self.ctx) as work:
            checkout = await repo.get_checkout(work.session, checkout_id)
            if checkout is None or (scope is not None and checkout.till_id != scope):
                raise CheckoutNotFound(checkout_id)
            await repo.lock_till(work.session, checkout.till_id)
            checkout = await repo.get_checkout(work.session, checkout_id)
            assert checkout is not None
            if idempotency_key:
                seen = await repo.get_idempotent_request(work.session, key_scope, idempotency_key)
                if seen is not None:
                    if seen.request_hash != digest:
                        raise IdempotencyKeyReused()
                    return checkout, True
                work.session.add(
                    IdempotentRequest(
                        scope=key_scope,
                        key=idempotency_key,
                        request_hash=digest,
                        created_at=self.ctx.clock(),
                    )
                )
            await self.apply_locked(work, checkout, event, actor=actor)
            return checkout, False

    async def cancel(
        self, scope: str | None, checkout_id: str, *, idempotency_key: str | None, actor: str
    ) -> Checkout:
        """Cancel and return only when the outcome is final — or when the customer approved
        first and the late-approval policy kept the reservation (state ``AUTHORIZED``)."""
        try:
            await self._pos_command(
                scope,
                checkout_id,
                Event(EventKind.CANCEL_REQUESTED, reason="cancelled by the till"),
                action="cancel",
                idempotency_key=idempotency_key,
                body={},
                actor=actor,
            )
        except TransitionRefused as exc:
            if exc.code != "checkout_final":
                raise
            checkout = await self.get(scope, checkout_id)
            if checkout.state == CheckoutState.CANCELLED.value:
                return checkout  # cancelling twice is not an error
            raise
        # Vipps's "cancelled" webhook may close the checkout before the cancel call's own
        # answer (with the released amount) is recorded: wait for both.
        return await self._settled(
            scope,
            checkout_id,
            lambda c, calls: c.state != CheckoutState.CANCELLING.value and not calls.cancel,
        )

    async def capture(
        self,
        scope: str | None,
        checkout_id: str,
        amount: int | None,
        *,
        idempotency_key: str | None,
        actor: str,
    ) -> Checkout:
        await self._pos_command(
            scope,
            checkout_id,
            Event(EventKind.CAPTURE_REQUESTED, amount=amount),
            action="capture",
            idempotency_key=idempotency_key,
            body={"amount": amount},
            actor=actor,
        )
        crash_point("capture.after_commit")
        # A partial capture also releases the rest of the reservation (a second outbox call):
        # answer once both are over, so the till sees CAPTURED with the released amount.
        return await self._settled(
            scope, checkout_id, lambda _, calls: not (calls.capture or calls.cancel)
        )

    async def refund(
        self,
        scope: str | None,
        checkout_id: str,
        amount: int | None,
        *,
        idempotency_key: str | None,
        actor: str,
    ) -> Checkout:
        await self._pos_command(
            scope,
            checkout_id,
            Event(EventKind.REFUND_REQUESTED, amount=amount),
            action="refund",
            idempotency_key=idempotency_key,
            body={"amount": amount},
            actor=actor,
        )
        return await self._settled(scope, checkout_id, lambda _, calls: not calls.refund)

    async def list(
        self,
        *,
        till_id: str | None = None,
        states: list[str] | None = None,
        older_than: timedelta | None = None,
        limit: int = 100,
    ) -> list[Checkout]:
        cutoff = self.ctx.clock() - older_than if older_than is not None else None
        async with self.ctx.sessions() as session:
            rows = await repo.list_checkouts(
                session, till_id=till_id, states=states, older_than=cutoff, limit=limit
            )
        return list(rows)

    async def sync_with_vipps(self, checkout_id: str, *, actor: str) -> bool:
        """GET the payment from Vipps and apply what differs. True if our state changed."""
        checkout = await self.get(None, checkout_id)
        try:
            details = await self.ctx.vipps.get_payment(checkout.msn, checkout.reference)
        except VippsNotFound:
            return False  # never created (or not yet): the outbox still owns the create
        changed = False
        for event in repair_events(checkout, details):
            try:
                decision = await self.apply(checkout_id, event, actor=actor)
            except TransitionRefused:
                continue
            if decision is not None and decision.changes_state:
                changed = True
                self.ctx.metrics.count_reconciler_repair(kind=event.kind.value.lower())
                log.info(
                    "reconciler.repaired",
                    checkout_id=checkout_id,
                    event=event.kind.value,
                    to_state=decision.state.value,
                )
        return changed

    @vipps_errors_as_problems  # an operator action: Vipps's refusal is a problem, not a 500
    async def resync(self, checkout_id: str) -> Checkout:
        await self.sync_with_vipps(checkout_id, actor="admin")
        return await self.get(None, checkout_id)

    async def queue_stats(self) -> dict[str, tuple[int, float]]:
        async with self.ctx.sessions() as session:
            return await repo.queue_stats(session, self.ctx.clock())

    async def till_feed(
        self,
        till_id: str,
        *,
        after: int | None,
        keepalive: float = 15.0,
        stop: asyncio.Event | None = None,
    ) -> AsyncIterator[FeedItem | None]:
        """The till's changes, oldest first, until ``stop`` is set (the credential the stream
        was opened with was revoked; nothing is yielded after that); ``None`` is a keep-alive
        tick.

        Without ``after`` it starts with a ``snapshot`` of the active checkout. With it (the
        SSE ``Last-Event-ID``), it replays every change after that id first: nothing is lost
        across a reconnect.
        """
        if after is None:
            async with self.ctx.sessions() as session:
                after = await repo.last_change_id(session, till_id)
                active = await repo.active_checkout(session, till_id)
            yield FeedItem(after, "snapshot", active.id if active else None, {}, active)
        while True:
            if stop is not None and stop.is_set():
                return
            event = self.ctx.hub.event_for(till_key(till_id))
            async with self.ctx.sessions() as session:
                rows = await repo.changes_after(session, till_id, after)
                items = []
                for row in rows:
                    checkout = (
                        await repo.get_checkout(session, row.checkout_id)
                        if row.checkout_id
                        else None
                    )
                    items.append(FeedItem(row.id, row.kind, row.checkout_id, row.data, checkout))
            for item in items:
                if stop is not None and stop.is_set():
                    return
                after = item.change_id
                yield item
            if items:
                continue
            if not await wait_any(event, stop, within=keepalive):
                yield None
            elif stop is not None and stop.is_set():
                return


@dataclass(frozen=True)
class FeedItem:
    change_id: int
    kind: str
    checkout_id: str | None
    data: dict[str, Any]
    checkout: Checkout | None
