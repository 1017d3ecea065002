"""The checkout orchestrator: load, decide, save — one statement each way on the hot path.

Every change of a checkout goes the same way:

1. **Load** the checkout (or the till, for a new checkout or a scan) with everything a decision
   depends on — its till's revision and audit head, the store's club policy, the commands still
   in flight — in one statement (:mod:`app.persistence`).
2. **Decide**: apply :func:`app.domain.state_machine.decide` to the loaded facts and assemble
   one :class:`TillWrite`: the checkout's new columns, the outbox commands the decision implies,
   the change row for the till's feed, the audit entry, the webhook or command this answers.
3. **Save** it in one statement that succeeds only if the till's revision is still the one
   loaded. Otherwise nothing is written and steps 1–2 run again on fresh data
   (:data:`MAX_ATTEMPTS`): decisions never act on stale facts.

An event the state machine ignores writes nothing (only the webhook or command it answers is
marked done). Atomic phases (DESIGN.md §3): nothing here calls Vipps. State, ``reference`` and
each command's ``Idempotency-Key`` are saved first; the outbox makes the call outside any
transaction and feeds the result back through :meth:`CheckoutService.record_command`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import secrets
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog

from app import repository as repo
from app.domain.call_budget import with_call
from app.domain.receipt import check_checkout, normalize_receipt
from app.domain.state_machine import (
    UNPAID_FINAL_STATES,
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
from app.domain.statuses import (
    CheckInStatus,
    ClubPolicy,
    InboxStatus,
    OutboxStatus,
    TillStatus,
)
from app.notifications import checkout_key, till_key, wait_any
from app.persistence.records import (
    DECISION_COLUMNS,
    ChangeRecord,
    CheckoutRecord,
    CommandOutcome,
    CommandRecord,
    InboxOutcome,
    LoadedCheckout,
    LoadedTill,
    NewChange,
    NewCheckIn,
    NewCommand,
    PendingCommand,
    RevisionConflict,
    Saved,
    SeenRequest,
    StorePolicy,
    TillRecord,
    TillWrite,
    WaitingCheckIn,
)
from app.persistence.store import Duplicate
from app.service.audit import till_line
from app.service.context import ServiceContext
from app.service.crashpoints import crash_point
from app.service.errors import (
    ActiveCheckoutExists,
    CheckoutNotFound,
    IdempotencyKeyReused,
    InvalidCheckout,
    TillInactive,
    TillNotFound,
    TransitionRefused,
    vipps_errors_as_problems,
)
from app.service.sync import repair_events
from app.vipps.errors import VippsNotFound

log = structlog.get_logger("app.checkout")

T = TypeVar("T")
# Saves that found their till changed since the load, before giving up. Each retry reloads and
# decides again; only writes to the same till compete, so more than a few means a storm.
MAX_ATTEMPTS = 8
_REFERENCE_SAFE = re.compile(r"[^a-zA-Z0-9-]")
# Columns whose change is visible to tills (their change makes a new version).
_VISIBLE = tuple(
    c for c in DECISION_COLUMNS if c not in ("updated_at", "version", "mutating_calls")
)


@dataclass(frozen=True)
class CreateCheckout:
    amount: int
    currency: str
    receipt: dict[str, Any] | None
    description: str | None
    capture_mode: CapturePolicy


@dataclass(frozen=True)
class CreateResult:
    checkout: CheckoutRecord
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
    def of(cls, commands: Sequence[PendingCommand]) -> InFlight:
        return cls(
            capture=sum(c.amount or 0 for c in commands if c.kind is CommandKind.CAPTURE),
            refund=sum(c.amount or 0 for c in commands if c.kind is CommandKind.REFUND),
            cancel=any(c.kind is CommandKind.CANCEL for c in commands),
        )


def facts_of(
    checkout: CheckoutRecord,
    policy: StorePolicy,
    in_flight: InFlight,
    late_approval: LateApprovalPolicy,
) -> CheckoutFacts:
    return CheckoutFacts(
        state=checkout.state,
        amount=checkout.amount_value,
        capture_mode=checkout.capture_mode,
        authorized=checkout.authorized_value,
        captured=checkout.captured_value,
        refunded=checkout.refunded_value,
        cancelled=checkout.cancelled_value,
        capture_pending=in_flight.capture,
        refund_pending=in_flight.refund,
        cancel_pending=in_flight.cancel,
        club_step=policy.club_policy is not ClubPolicy.OFF,
        # A member price is for members: a customer the club step did not identify pays at once.
        member_price_hold=policy.member_price_hold and checkout.member_id is not None,
        late_approval=late_approval,
    )


_IDEMPOTENCY_SUFFIX = {
    CommandKind.EXCHANGE_TOKEN: "exchange",
    CommandKind.CREATE_PAYMENT: "create",
    CommandKind.CAPTURE: "capture",
    CommandKind.CANCEL: "cancel",
    CommandKind.REFUND: "refund",
}


@dataclass(frozen=True)
class Applied:
    """What applying an event did: the decision (``None`` when nothing was decided) and the
    checkout as saved (or as loaded, when nothing was written)."""

    decision: Decision | None
    checkout: CheckoutRecord
    replayed: bool = False

    @property
    def changes_state(self) -> bool:
        return self.decision is not None and self.decision.changes_state


@dataclass
class _Draft:
    """One till write being assembled from decisions; saved as a whole or not at all."""

    till: TillRecord
    now: datetime
    write: TillWrite = field(init=False)
    head: tuple[int, str] = field(init=False)
    commands: list[tuple[NewCommand, CheckoutRecord]] = field(default_factory=list)
    changes: list[NewChange] = field(default_factory=list)
    # Checkouts this write changes, with the commands unfinished once it is saved.
    touched: dict[str, tuple[CheckoutRecord, list[PendingCommand]]] = field(default_factory=dict)
    after: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.write = TillWrite(self.till.id, self.till.revision)
        self.head = (self.till.audit_seq, self.till.audit_head)

    def audit(
        self,
        *,
        actor: str,
        action: str,
        checkout_id: str | None,
        amount_value: int | None,
        detail: dict[str, Any],
    ) -> None:
        line = till_line(
            self.till.id,
            self.head,
            at=self.now,
            actor=actor,
            action=action,
            checkout_id=checkout_id,
            amount_value=amount_value,
            detail=detail,
        )
        self.head = (line.seq, line.hash)
        self.write.audit = (*self.write.audit, line)

    @property
    def empty(self) -> bool:
        w = self.write
        return not (
            w.inserted
            or w.updated
            or self.commands
            or self.changes
            or w.audit
            or w.checkin
            or w.use_checkin
            or w.inbox
            or w.command
            or w.request
        )


class CheckoutService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        # Per-till locks of this process, for decisions that lost a race (see _optimistic).
        self._till_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    # ---- the one place decisions are made -----------------------------------------------------

    def _decide(
        self,
        draft: _Draft,
        checkout: CheckoutRecord,
        before: CheckoutRecord | None,
        unfinished: list[PendingCommand],
        policy: StorePolicy,
        event: Event | None,
        *,
        actor: str,
    ) -> Decision | None:
        """Apply ``event`` (if any) to ``checkout`` — which may already carry the caller's edits
        — and add what changed to ``draft``. ``before`` is the checkout as loaded (``None`` for
        one inserted by this draft). Raises :class:`TransitionRefused` for a request the
        checkout's state does not allow."""
        now = draft.now
        decision: Decision | None = None
        previous = before.state if before is not None else checkout.state
        money_changed = False
        state_changed = False
        new_commands: list[NewCommand] = []
        if event is not None:
            in_flight = InFlight.of(unfinished)
            late = LateApprovalPolicy(self.ctx.settings.checkout.cancel_after_approval)
            facts = facts_of(checkout, policy, in_flight, late)
            try:
                decision = decide(facts, event)
            except InvalidTransition as exc:
                raise TransitionRefused(exc.code, exc.detail, checkout.state.value) from exc
            bookkeeping = {
                "authorized_value": decision.authorized,
                "captured_value": decision.captured,
                "refunded_value": decision.refunded,
                "cancelled_value": decision.cancelled,
                # A cache of the outbox for readers (the API): what is on its way to Vipps.
                "capture_pending_value": in_flight.capture
                + sum(c.amount or 0 for c in decision.commands if c.kind is CommandKind.CAPTURE),
                "refund_pending_value": in_flight.refund
                + sum(c.amount or 0 for c in decision.commands if c.kind is CommandKind.REFUND),
            }
            for column, value in bookkeeping.items():
                if value is not None and getattr(checkout, column) != value:
                    setattr(checkout, column, value)
                    money_changed = True
            if decision.capture_mode is not None:
                checkout.capture_mode = decision.capture_mode
            state_changed = decision.state is not checkout.state
            if state_changed:
                checkout.state = decision.state
                self._stamp(draft, checkout, decision.state, policy)
            if decision.note and (
                decision.outcome is Outcome.ANOMALY or decision.state is CheckoutState.FAILED
            ):
                checkout.failure_detail = decision.note
            first_in_line = not unfinished
            for index, command in enumerate(decision.commands):
                # Only a command with nothing before it in the checkout's line may be sent at
                # once (commands of a checkout run in order; see the outbox claim).
                new_commands.append(
                    self._command(checkout, command, now, claim=first_in_line and index == 0)
                )
        visible = before is None or any(
            getattr(checkout, c) != getattr(before, c) for c in _VISIBLE
        )
        if not (visible or new_commands):
            return decision
        checkout.version += 1
        checkout.updated_at = now
        for new in new_commands:
            draft.commands.append((new, checkout))
        applied = decision is not None and (state_changed or money_changed or new_commands)
        if before is not None:
            draft.write.updated = checkout
            kind = "checkout.updated"
            data: dict[str, Any] = {"version": checkout.version}
            if event is not None:
                data["event"] = event.kind.value
            elif checkout.club_outcome != before.club_outcome:
                data["club"] = checkout.club_outcome
            draft.changes.append(NewChange(kind, checkout.id, checkout.state.value, data))
        if applied and decision is not None and event is not None:
            log.info(
                "checkout.transition",
                checkout_id=checkout.id,
                till_id=checkout.till_id,
                trigger=event.kind.value,
                from_state=previous.value,
                to_state=checkout.state.value,
                outcome=decision.outcome.value,
                commands=[c.kind.value for c in new_commands],
            )
            # "All that is left" requests carry no amount; the queued command says what it is.
            amount = event.amount
            if amount is None:
                amount = next((c.amount for c in decision.commands if c.amount is not None), None)
            draft.audit(
                actor=actor,
                action=event.kind.value.lower(),
                checkout_id=checkout.id,
                amount_value=amount,
                detail={
                    "from": previous.value,
                    "to": checkout.state.value,
                    "outcome": decision.outcome.value,
                },
            )
        if state_changed and decision is not None:
            self._after_transition(draft, checkout, decision.state)
        draft.touched[checkout.id] = (checkout, list(unfinished))
        return decision

    def _after_transition(
        self, draft: _Draft, checkout: CheckoutRecord, state: CheckoutState
    ) -> None:
        metrics, now = self.ctx.metrics, draft.now
        if state.is_final:
            store, final = checkout.store_id, state.value
            draft.after.append(lambda: metrics.count_checkout_finished(store=store, state=final))
        requested_at = checkout.payment_requested_at
        if state is CheckoutState.AUTHORIZED and requested_at is not None:
            store, seconds = checkout.store_id, (now - requested_at).total_seconds()
            draft.after.append(
                lambda: metrics.observe_payment_request_to_authorization(
                    store=store, seconds=seconds
                )
            )

    def _stamp(
        self, draft: _Draft, checkout: CheckoutRecord, state: CheckoutState, policy: StorePolicy
    ) -> None:
        now = draft.now
        first_poll = timedelta(seconds=self.ctx.settings.workers.reconcile_first_poll_seconds)
        match state:
            case CheckoutState.PAYMENT_REQUESTED:
                checkout.payment_requested_at = now
                checkout.next_poll_at = now + first_poll
                checkout.poll_count = 0
                draft.write.schedule_poll = True
            case CheckoutState.CANCELLING | CheckoutState.AUTHORIZED:
                checkout.next_poll_at = now + first_poll
                draft.write.schedule_poll = True
                if state is CheckoutState.AUTHORIZED:
                    checkout.authorized_at = checkout.authorized_at or now
            case CheckoutState.AWAITING_POS_UPDATE:
                # The store's hold, but never past the moment the payment must go out for the
                # customer token (15 minutes from the scan) to still be valid.
                deadline = now + timedelta(seconds=policy.member_price_hold_seconds)
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
                draft.write.schedule_poll = True
                # The customer token is useless now; do not keep it.
                checkout.customer_token_enc = None

    def _command(
        self, checkout: CheckoutRecord, command: Command, now: datetime, *, claim: bool
    ) -> NewCommand:
        """The outbox row for ``command``, its ``Idempotency-Key`` fixed now for every retry.

        A key is the reference, the call and the checkout's version at the decision: unique per
        command (every decision with commands makes a new version) without counting rows. With
        ``claim`` (and an outbox running in this process) the row is written already claimed —
        ``IN_FLIGHT`` under a lease, as a claim would leave it — and is handed to the outbox
        right after the save. If this process dies before the call is recorded, the lease
        expires and any replica's claim retries it with the same key.
        """
        suffix = _IDEMPOTENCY_SUFFIX[command.kind]
        if command.kind is CommandKind.CREATE_PAYMENT:
            key = f"{checkout.reference}-{suffix}"
            payload: dict[str, Any] = {"body": self._create_payment_body(checkout)}
        else:
            key = f"{checkout.reference}-{suffix}-v{checkout.version + 1}"
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
        return NewCommand(
            kind=command.kind,
            idempotency_key=key,
            payload=payload,
            claimed=claim,
            lease_until=now + lease if claim else None,
        )

    def _create_payment_body(self, checkout: CheckoutRecord) -> dict[str, Any]:
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

    # ---- saving -------------------------------------------------------------------------------

    async def _save(self, draft: _Draft) -> Saved:
        """Save the draft (raises :class:`RevisionConflict`), then tell everyone who waits."""
        write = draft.write
        write.commands = [command for command, _ in draft.commands]
        write.changes = list(draft.changes)
        announce: list[tuple[str | None, int | None]] = [
            (c.id, c.version) for c, _ in draft.touched.values()
        ]
        if any(change.checkout_id not in draft.touched for change in draft.changes):
            announce.append((None, None))  # the till's feed has news of no checkout of ours
        write.announce = announce
        saved = await self.ctx.store.save(write, draft.now)
        dispatch: list[CommandRecord] = []
        for (command, checkout), command_id in zip(draft.commands, saved.command_ids, strict=True):
            queued = PendingCommand(command_id, command.kind, command.payload.get("amount"))
            draft.touched[checkout.id][1].append(queued)
            if command.claimed:
                dispatch.append(
                    CommandRecord(
                        id=command_id,
                        checkout_id=checkout.id,
                        till_id=checkout.till_id,
                        kind=command.kind,
                        msn=checkout.msn,
                        reference=checkout.reference,
                        idempotency_key=command.idempotency_key,
                        payload=command.payload,
                        attempts=1,
                        outcome_unknown=False,
                        customer_token_enc=checkout.customer_token_enc,
                        customer_token_expires_at=checkout.customer_token_expires_at,
                        mutating_calls=checkout.mutating_calls,
                        scanned_at=checkout.scanned_at,
                        store_id=checkout.store_id,
                    )
                )
        hub = self.ctx.hub
        if draft.touched:
            revision = write.expected_revision + 1
            for checkout, pending in draft.touched.values():
                hub.publish(
                    checkout.till_id, checkout.id, checkout.version, checkout, pending, revision
                )
        else:
            hub.publish(write.till_id, None, None)
        if dispatch and self.ctx.dispatch_soon is not None:
            self.ctx.dispatch_soon(dispatch)
        if len(dispatch) < len(draft.commands) or (
            write.command is not None
            and write.command.status is not OutboxStatus.PENDING
            and any(pending for _, pending in draft.touched.values())
        ):
            # A command waits in line (or was next in line behind the one just finished): the
            # claim loop sends it.
            hub.outbox_wakeup.set()
        for callback in draft.after:
            callback()
        return saved

    async def _optimistic(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` (load, decide, save) until its save finds the till unchanged.

        The first attempt takes no lock. Once it lost a race, the retries of this process take
        the till's local lock, so decisions of one process about one till queue instead of
        racing each other again; only another process can still make one of them retry. The
        lock is held for a load and a save — never across a call to Vipps.
        """
        try:
            return await attempt()
        except RevisionConflict as conflict:
            self.ctx.metrics.count_save_conflict()
            till_id = conflict.till_id
        lock = self._till_locks.get(till_id)
        if lock is None:
            lock = self._till_locks[till_id] = asyncio.Lock()
        async with lock:
            for _ in range(MAX_ATTEMPTS - 2):
                try:
                    return await attempt()
                except RevisionConflict:
                    self.ctx.metrics.count_save_conflict()
            return await attempt()

    # ---- applying events to existing checkouts ------------------------------------------------

    async def change(
        self,
        checkout_id: str,
        event: Event | None,
        *,
        actor: str,
        edit: Callable[[CheckoutRecord], None] | None = None,
        scope: str | None = None,
        request: SeenRequest | None = None,
        missing_ok: bool = False,
    ) -> Applied | None:
        """Edit the checkout (``edit`` gets a copy to change) and apply ``event``, atomically.

        ``scope``: only this till's checkout may be changed (a till's own request). ``request``:
        a POS request's Idempotency-Key — the same key with the same body again changes nothing
        and answers with the checkout as it is; with another body it is refused. Returns
        ``None`` for a checkout that does not exist when ``missing_ok``.
        """

        async def attempt() -> Applied | None:
            key = (request.scope, request.key) if request is not None else None
            loaded = await self.ctx.store.load_checkout(checkout_id, request=key)
            if loaded is None or (scope is not None and loaded.checkout.till_id != scope):
                if missing_ok:
                    return None
                raise CheckoutNotFound(checkout_id)
            if request is not None and loaded.seen_request is not None:
                if loaded.seen_request != request.request_hash:
                    raise IdempotencyKeyReused()
                return Applied(None, loaded.checkout, replayed=True)
            draft = _Draft(loaded.till, self.ctx.clock())
            checkout = loaded.checkout.copy()
            if edit is not None:
                edit(checkout)
            decision = self._decide(
                draft,
                checkout,
                loaded.checkout,
                list(loaded.unfinished),
                loaded.policy,
                event,
                actor=actor,
            )
            draft.write.request = request
            if draft.empty:
                return Applied(decision, loaded.checkout)
            await self._save(draft)
            return Applied(decision, checkout)

        return await self._optimistic(attempt)

    async def apply(self, checkout_id: str, event: Event, *, actor: str) -> Decision | None:
        """Apply an event from a worker; ``None`` if the checkout does not exist."""
        applied = await self.change(checkout_id, event, actor=actor, missing_ok=True)
        return applied.decision if applied is not None else None

    async def record_command(
        self,
        command: CommandRecord,
        outcome: CommandOutcome,
        event: Event | None,
        *,
        failure_code: str | None = None,
        call_stamp: float | None = None,
    ) -> bool:
        """Record how an attempt of ``command`` ended and apply what it taught us, atomically.

        False if the command was already finished (another worker's lease overlapped; its
        result stands) or its checkout is gone.
        """
        if command.checkout_id is None:
            await self.ctx.store.finish_command(outcome, self.ctx.clock())
            return True
        checkout_id = command.checkout_id

        async def attempt() -> bool:
            loaded = await self.ctx.store.load_checkout(checkout_id)
            if loaded is None:
                await self.ctx.store.finish_command(outcome, self.ctx.clock())
                return False
            if all(p.id != command.id for p in loaded.unfinished):
                return False  # another worker finished it; its result stands
            draft = _Draft(loaded.till, self.ctx.clock())
            checkout = loaded.checkout.copy()
            if call_stamp is not None:
                checkout.mutating_calls = with_call(
                    checkout.mutating_calls, command.kind.value, call_stamp
                )
            if failure_code and checkout.state not in UNPAID_FINAL_STATES:
                # A sale that already ended unpaid keeps the reason it ended with: a command
                # given up afterwards (e.g. a create whose token the decline cleared) explains
                # nothing to the till.
                checkout.failure_code = failure_code[:64]
            if (
                command.kind is CommandKind.CREATE_PAYMENT
                and outcome.status is OutboxStatus.DONE
                and checkout.vipps_state is None
                and event is not None
                and event.kind is EventKind.PAYMENT_CREATED
            ):
                # The push is on the customer's phone now: worth telling the till.
                checkout.vipps_state = "CREATED"
            finished = outcome.status is not OutboxStatus.PENDING
            still = [p for p in loaded.unfinished if p.id != command.id or not finished]
            self._decide(
                draft,
                checkout,
                loaded.checkout,
                still,
                loaded.policy,
                event,
                actor=f"outbox:{command.kind.value.lower()}",
            )
            if (
                checkout.mutating_calls != loaded.checkout.mutating_calls
                and not draft.write.updated
            ):
                draft.write.updated = checkout  # the rate-limit stamp alone: not a new version
            # Waiters on what is in flight (a till's cancel, capture or refund) learn that this
            # call is over, whether or not it changed anything they can see.
            draft.touched.setdefault(checkout.id, (checkout, still))
            draft.write.command = outcome
            await self._save(draft)
            return True

        return await self._optimistic(attempt)

    # ---- scans --------------------------------------------------------------------------------

    def _attach_scan(
        self,
        draft: _Draft,
        loaded: LoadedCheckout,
        checkout: CheckoutRecord,
        before: CheckoutRecord | None,
        token_enc: str,
        expires_at: datetime,
        scanned_at: datetime,
    ) -> Decision | None:
        """The customer of ``checkout`` (waiting for a scan) is the one who scanned: it gets the
        customer token and the scan is applied (payment request or club step)."""
        checkout.customer_token_enc = token_enc
        checkout.customer_token_expires_at = expires_at
        checkout.scanned_at = scanned_at
        return self._decide(
            draft,
            checkout,
            before,
            list(loaded.unfinished),
            loaded.policy,
            Event(EventKind.CUSTOMER_SCANNED),
            actor="vipps:user.checked-in",
        )

    async def process_checkin(
        self,
        inbox_id: int,
        *,
        msn: str,
        merchant_qr_id: str,
        token_enc: str,
        initiated_at: datetime,
    ) -> tuple[str, str | None]:
        """Apply a ``user.checked-in.v1`` to its till; returns (outcome, checkout id).

        The rules: an inactive till ignores it; a token with too little life left is expired;
        a checkout waiting for a scan gets it; a busy till sets it aside (it may be the same
        customer scanning twice, and a later sale must never be pushed to them); at an idle
        till it waits for the next checkout (a newer scan supersedes an older waiting one).
        """
        settings = self.ctx.settings.checkout
        lifetime = timedelta(seconds=settings.customer_token_lifetime_seconds)
        margin = timedelta(seconds=settings.payment_request_margin_seconds)
        expires = initiated_at + lifetime

        async def attempt() -> tuple[str, str | None]:
            loaded = await self.ctx.store.load_till_by_qr(msn, merchant_qr_id, inbox_id=inbox_id)
            if loaded is None:
                await self.finish_inbox(inbox_id, InboxStatus.UNMATCHED, "unmatched", None)
                return "unmatched", None
            if loaded.inbox_status not in (InboxStatus.PENDING, InboxStatus.FAILED):
                return "skipped", None
            draft = _Draft(loaded.till, self.ctx.clock())
            now = draft.now
            active = loaded.active
            checkout_id: str | None = None
            status: CheckInStatus
            if loaded.till.status is not TillStatus.ACTIVE:
                status = CheckInStatus.IGNORED_INACTIVE_TILL
            elif expires <= now + margin:
                status = CheckInStatus.EXPIRED
            elif active is not None and active.checkout.state is CheckoutState.AWAITING_SCAN:
                status, checkout_id = CheckInStatus.USED, active.checkout.id
                self._attach_scan(
                    draft,
                    active,
                    active.checkout.copy(),
                    active.checkout,
                    token_enc,
                    expires,
                    initiated_at,
                )
            elif active is not None:
                status, checkout_id = CheckInStatus.IGNORED_BUSY, active.checkout.id
            else:
                status = CheckInStatus.WAITING
                draft.write.supersede_waiting = True
            checkin_id = str(uuid.uuid4())
            draft.write.checkin = NewCheckIn(
                id=checkin_id,
                merchant_qr_id=merchant_qr_id,
                customer_token_enc=token_enc,
                initiated_at=initiated_at,
                expires_at=expires,
                status=status,
                checkout_id=checkout_id,
                inbox_id=inbox_id,
            )
            outcome = "attached" if status is CheckInStatus.USED else status.value.lower()
            if status is not CheckInStatus.USED:
                draft.changes.append(
                    NewChange(
                        "scan." + outcome,
                        checkout_id,
                        None,
                        {"checkinId": checkin_id, "expiresAt": expires.isoformat()},
                    )
                )
            draft.write.inbox = InboxOutcome(inbox_id, InboxStatus.PROCESSED, outcome, checkout_id)
            await self._save(draft)
            log.info(
                "checkout.scan", till_id=loaded.till.id, outcome=outcome, checkout_id=checkout_id
            )
            return outcome, checkout_id

        return await self._optimistic(attempt)

    async def process_payment_event(
        self, inbox_id: int, *, msn: str, reference: str, name: str, event: Event
    ) -> tuple[str, str | None]:
        """Apply a payment webhook that needs a decision (authorized, aborted, expired,
        terminated, cancelled); returns (outcome, checkout id)."""

        async def attempt() -> tuple[str, str | None]:
            loaded = await self.ctx.store.load_by_reference(msn, reference, inbox_id=inbox_id)
            if loaded is None:
                await self.finish_inbox(inbox_id, InboxStatus.UNMATCHED, "unmatched", None)
                return "unmatched", None
            if loaded.inbox_status not in (InboxStatus.PENDING, InboxStatus.FAILED):
                return "skipped", loaded.checkout.id
            draft = _Draft(loaded.till, self.ctx.clock())
            checkout = loaded.checkout.copy()
            decision = self._decide(
                draft,
                checkout,
                loaded.checkout,
                list(loaded.unfinished),
                loaded.policy,
                event,
                actor=f"vipps:{name}",
            )
            assert decision is not None
            outcome = decision.outcome.value.lower()
            inbox = InboxOutcome(inbox_id, InboxStatus.PROCESSED, outcome, checkout.id)
            if draft.empty:
                # Nothing to decide (a duplicate, stale or reordered event): nothing written
                # but the event's own record.
                await self.ctx.store.finish_inbox(inbox, draft.now)
            else:
                draft.write.inbox = inbox
                await self._save(draft)
            return outcome, checkout.id

        return await self._optimistic(attempt)

    async def finish_inbox(
        self, inbox_id: int, status: InboxStatus, outcome: str, checkout_id: str | None
    ) -> None:
        await self.ctx.store.finish_inbox(
            InboxOutcome(inbox_id, status, outcome, checkout_id), self.ctx.clock()
        )

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
        margin = timedelta(seconds=self.ctx.settings.checkout.payment_request_margin_seconds)

        async def attempt() -> CreateResult:
            now = self.ctx.clock()
            loaded = await self.ctx.store.load_till(
                till_id, create_key=idempotency_key, waiting_until=now + margin
            )
            if loaded is None:
                raise TillNotFound(till_id)
            if loaded.keyed is not None:
                if loaded.keyed.create_request_hash != body_hash:
                    raise IdempotencyKeyReused()
                return CreateResult(loaded.keyed, replayed=True)
            if loaded.till.status is not TillStatus.ACTIVE:
                raise TillInactive(till_id)
            if loaded.active is not None:
                active = loaded.active.checkout
                raise ActiveCheckoutExists(active.id, active.state.value)
            draft = _Draft(loaded.till, now)
            checkout = self._new_checkout(loaded, request, description, check, now)
            checkout.create_key, checkout.create_request_hash = idempotency_key, body_hash
            draft.write.inserted = checkout
            draft.changes.append(
                NewChange("checkout.created", checkout.id, checkout.state.value, {"version": 1})
            )
            draft.audit(
                actor=f"till:{loaded.till.api_key_id}",
                action="checkout.create",
                checkout_id=checkout.id,
                amount_value=request.amount,
                detail={"currency": request.currency, "captureMode": request.capture_mode.value},
            )
            draft.touched[checkout.id] = (checkout, [])
            waiting = loaded.waiting
            if waiting is not None:
                # Scan first, basket second: the waiting customer is this checkout's customer.
                self._use_waiting(draft, loaded, checkout, waiting)
            try:
                await self._save(draft)
            except Duplicate:
                # The partial unique index or the idempotency constraint caught a race: report
                # what is there now (the next attempt reads it).
                raise RevisionConflict(till_id) from None
            log.info(
                "checkout.created",
                checkout_id=checkout.id,
                till_id=till_id,
                amount=request.amount,
                currency=request.currency,
                state=checkout.state.value,
            )
            return CreateResult(checkout, replayed=False)

        return await self._optimistic(attempt)

    def _use_waiting(
        self,
        draft: _Draft,
        loaded: LoadedTill,
        checkout: CheckoutRecord,
        waiting: WaitingCheckIn,
    ) -> None:
        as_loaded = LoadedCheckout(checkout, loaded.till, loaded.policy, [])
        created = checkout.version
        self._attach_scan(
            draft,
            as_loaded,
            checkout,
            None,
            waiting.customer_token_enc,
            waiting.expires_at,
            waiting.initiated_at,
        )
        if checkout.version != created:
            # The scan made a second version of the new checkout: the feed says so too.
            data = {"version": checkout.version, "event": EventKind.CUSTOMER_SCANNED.value}
            draft.changes.append(
                NewChange("checkout.updated", checkout.id, checkout.state.value, data)
            )
        draft.write.use_checkin = (waiting.id, checkout.id)

    def _new_checkout(
        self,
        loaded: LoadedTill,
        request: CreateCheckout,
        description: str,
        check: Any,
        now: datetime,
    ) -> CheckoutRecord:
        till = loaded.till
        receipt = (
            normalize_receipt(request.receipt, currency=request.currency, pos_id=till.id)
            if request.receipt
            else None
        )
        timeout = timedelta(seconds=self.ctx.settings.checkout.awaiting_scan_timeout_seconds)
        return CheckoutRecord(
            id=str(uuid.uuid4()),
            till_id=till.id,
            store_id=till.store_id,
            msn=till.msn,
            state=CheckoutState.AWAITING_SCAN,
            amount_value=request.amount,
            original_amount_value=request.amount,
            currency=request.currency,
            receipt=receipt or {},
            warnings=[asdict(w) for w in check.warnings],
            description=description,
            capture_mode=request.capture_mode,
            reference=new_reference(till.id),
            create_key=None,
            create_request_hash=None,
            customer_token_enc=None,
            customer_token_expires_at=None,
            psp_reference=None,
            vipps_state=None,
            authorized_value=0,
            captured_value=0,
            refunded_value=0,
            cancelled_value=0,
            capture_pending_value=0,
            refund_pending_value=0,
            failure_code=None,
            failure_detail=None,
            member_id=None,
            club_outcome=None,
            club_note=None,
            ciba_auth_req_id=None,
            pos_update_deadline=None,
            created_at=now,
            updated_at=now,
            expires_at=now + timeout,
            scanned_at=None,
            payment_requested_at=None,
            authorized_at=None,
            finished_at=None,
            next_poll_at=None,
            poll_count=0,
            mutating_calls=[],
            version=1,
        )

    async def get(self, till_id: str | None, checkout_id: str) -> CheckoutRecord:
        checkout = await self.ctx.store.read_checkout(checkout_id)
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
    ) -> CheckoutRecord:
        """Long-poll: return once the checkout's version differs from ``after_version`` (or the
        version seen on arrival), when ``wait`` seconds have passed, or at once when ``stop``
        is set (the caller's credential was revoked: it re-checks before answering).

        Reads nothing it can be told: a change committed by this process arrives with the
        checkout as saved; one from another replica arrives as a version number, and only then
        is the checkout read.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(wait, self.ctx.settings.checkout.max_wait_seconds)
        hub = self.ctx.hub
        event = hub.event_for(checkout_key(checkout_id))
        known = hub.latest(checkout_id)
        if (
            known is not None
            and known.checkout is not None
            and (after_version is None or known.version >= after_version)
        ):
            checkout = known.checkout  # the newest this process has committed or heard of
        else:
            checkout = await self.get(till_id, checkout_id)
        if till_id is not None and checkout.till_id != till_id:
            raise CheckoutNotFound(checkout_id)
        baseline = checkout.version if after_version is None else after_version
        while checkout.version == baseline:
            remaining = deadline - loop.time()
            if remaining <= 0 or not await wait_any(event, stop, within=remaining):
                break
            if stop is not None and stop.is_set():
                break
            event = hub.event_for(checkout_key(checkout_id))
            known = hub.latest(checkout_id)
            if known is None:
                checkout = await self.get(till_id, checkout_id)  # forgotten: ask the database
            elif known.version <= checkout.version:
                continue  # nothing newer than what is in hand
            elif known.checkout is not None:
                checkout = known.checkout
            else:
                checkout = await self.get(till_id, checkout_id)  # committed by another replica
        return checkout

    async def _settled(
        self,
        scope: str | None,
        checkout_id: str,
        done: Callable[[CheckoutRecord, InFlight], bool],
    ) -> CheckoutRecord:
        """Wait (at most ``max_wait_seconds``) until ``done`` holds for the checkout and the Vipps
        calls still in flight for it; return the checkout as it then is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ctx.settings.checkout.max_wait_seconds
        hub = self.ctx.hub
        while True:
            event = hub.event_for(checkout_key(checkout_id))
            known = hub.latest(checkout_id)
            if known is not None and known.checkout is not None and known.unfinished is not None:
                checkout, in_flight = known.checkout, InFlight.of(known.unfinished)
            else:
                found = await self.ctx.store.read_checkout_and_unfinished(checkout_id)
                if found is None:
                    raise CheckoutNotFound(checkout_id)
                checkout, in_flight = found[0], InFlight.of(found[1])
            if scope is not None and checkout.till_id != scope:
                raise CheckoutNotFound(checkout_id)
            remaining = deadline - loop.time()
            if done(checkout, in_flight) or remaining <= 0:
                return checkout
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=min(remaining, 1.0))

    async def active(self, till_id: str) -> CheckoutRecord | None:
        return await self.ctx.store.active_checkout(till_id)

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
    ) -> tuple[CheckoutRecord, bool]:
        """Apply a till's request once per Idempotency-Key. Returns (checkout, replayed)."""
        request = None
        if idempotency_key:
            request = SeenRequest(
                f"checkout:{checkout_id}:{action}", idempotency_key, request_hash(body)
            )
        applied = await self.change(checkout_id, event, actor=actor, scope=scope, request=request)
        assert applied is not None
        return applied.checkout, applied.replayed

    async def cancel(
        self, scope: str | None, checkout_id: str, *, idempotency_key: str | None, actor: str
    ) -> CheckoutRecord:
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
            if checkout.state is CheckoutState.CANCELLED:
                return checkout  # cancelling twice is not an error
            raise
        # Vipps's "cancelled" webhook may close the checkout before the cancel call's own
        # answer (with the released amount) is recorded: wait for both.
        return await self._settled(
            scope,
            checkout_id,
            lambda c, calls: c.state is not CheckoutState.CANCELLING and not calls.cancel,
        )

    async def capture(
        self,
        scope: str | None,
        checkout_id: str,
        amount: int | None,
        *,
        idempotency_key: str | None,
        actor: str,
    ) -> CheckoutRecord:
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
    ) -> CheckoutRecord:
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
        states: Sequence[str] | None = None,
        older_than: timedelta | None = None,
        limit: int = 100,
    ) -> list[CheckoutRecord]:
        cutoff = self.ctx.clock() - older_than if older_than is not None else None
        async with self.ctx.sessions() as session:
            rows = await repo.list_checkouts(
                session, till_id=till_id, states=states, older_than=cutoff, limit=limit
            )
        return [CheckoutRecord.of(row) for row in rows]

    async def queue_stats(self) -> dict[str, tuple[int, float]]:
        async with self.ctx.sessions() as session:
            return await repo.queue_stats(session, self.ctx.clock())

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
                    trigger=event.kind.value,
                    to_state=decision.state.value,
                )
        return changed

    @vipps_errors_as_problems  # an operator action: Vipps's refusal is a problem, not a 500
    async def resync(self, checkout_id: str) -> CheckoutRecord:
        await self.sync_with_vipps(checkout_id, actor="admin")
        return await self.get(None, checkout_id)

    async def till_feed(
        self,
        till_id: str,
        *,
        after: int | None,
        keepalive: float = 15.0,
        stop: asyncio.Event | None = None,
    ) -> AsyncIterator[ChangeRecord | None]:
        """The till's changes, oldest first, until ``stop`` is set (the credential the stream
        was opened with was revoked; nothing is yielded after that); ``None`` is a keep-alive
        tick.

        Without ``after`` it starts with a ``snapshot`` of the active checkout. With it (the
        SSE ``Last-Event-ID``), it replays every change after that id first: nothing is lost
        across a reconnect. Each wake-up reads the new changes with their checkouts in one
        statement.
        """
        store = self.ctx.store
        if after is None:
            after = await store.last_change_id(till_id)
            active = await store.active_checkout(till_id)
            yield ChangeRecord(after, "snapshot", active.id if active else None, {}, active)
        while True:
            if stop is not None and stop.is_set():
                return
            event = self.ctx.hub.event_for(till_key(till_id))
            items = await store.changes_after(till_id, after, 100)
            for item in items:
                if stop is not None and stop.is_set():
                    return
                after = item.id
                yield item
            if items:
                continue
            if not await wait_any(event, stop, within=keepalive):
                yield None
            elif stop is not None and stop.is_set():
                return
