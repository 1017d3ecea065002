"""The checkout state machine: a transition table plus one pure :func:`decide`.

Nothing here does I/O. The service loads a checkout under its till's lock, builds
:class:`CheckoutFacts`, calls :func:`decide`, then persists the new state *and* the commands (Vipps
calls) in one transaction; an outbox worker performs the commands afterwards ("atomic phases").

::

    AWAITING_SCAN ─scan─▶ IDENTIFYING ─identified─▶ AWAITING_POS_UPDATE ─update/timeout─┐
          │   └──────────────scan (no club)───────────────┐   (member price hold)       │
          │                                               ▼                              ▼
          │                                       PAYMENT_REQUESTED ◀─────────────────────┘
          │                                        │   │   │  └─cancel─▶ CANCELLING ─▶ CANCELLED
          ▼                                        │   │   └─aborted──▶ REJECTED
       EXPIRED ◀──── scan timeout / Vipps expired ─┘   └──create refused─▶ FAILED
                                                   authorized
                                                       ▼
                                      AUTHORIZED ─capture─▶ CAPTURED ─refund─▶
                                                          PARTIALLY_REFUNDED ▶ REFUNDED

Invariants enforced here (and tested over every state × event pair):

* A capture command is only ever emitted in ``AUTHORIZED`` and never for more than
  ``authorized − captured − cancelled − capture in flight``.
* A refund never exceeds ``captured − refunded − refund in flight``.
* A final state never goes back to an active one. Late Vipps news about a final checkout never
  moves money except to *release* an authorization nobody will capture.
* Duplicate or reordered Vipps events are no-ops (:attr:`Outcome.IGNORED`), never errors: Vipps
  retries anything we do not acknowledge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import assert_never


class CheckoutState(StrEnum):
    AWAITING_SCAN = "AWAITING_SCAN"
    IDENTIFYING = "IDENTIFYING"
    AWAITING_POS_UPDATE = "AWAITING_POS_UPDATE"
    PAYMENT_REQUESTED = "PAYMENT_REQUESTED"
    CANCELLING = "CANCELLING"
    AUTHORIZED = "AUTHORIZED"
    CAPTURED = "CAPTURED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUNDED = "REFUNDED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    FAILED = "FAILED"

    @property
    def is_active(self) -> bool:
        """Occupies its till (at most one such checkout per till, enforced by a unique index)."""
        return self in ACTIVE_STATES

    @property
    def is_final(self) -> bool:
        return self not in ACTIVE_STATES


ACTIVE_STATES = frozenset(
    {
        CheckoutState.AWAITING_SCAN,
        CheckoutState.IDENTIFYING,
        CheckoutState.AWAITING_POS_UPDATE,
        CheckoutState.PAYMENT_REQUESTED,
        CheckoutState.CANCELLING,
        CheckoutState.AUTHORIZED,
    }
)
# Money moved: only refunds may follow.
PAID_STATES = frozenset(
    {CheckoutState.CAPTURED, CheckoutState.PARTIALLY_REFUNDED, CheckoutState.REFUNDED}
)
# Ended without money moving.
UNPAID_FINAL_STATES = frozenset(
    {
        CheckoutState.CANCELLED,
        CheckoutState.REJECTED,
        CheckoutState.EXPIRED,
        CheckoutState.FAILED,
    }
)


class EventKind(StrEnum):
    # From the till / POS
    CANCEL_REQUESTED = "CANCEL_REQUESTED"
    CAPTURE_REQUESTED = "CAPTURE_REQUESTED"
    REFUND_REQUESTED = "REFUND_REQUESTED"
    POS_UPDATED = "POS_UPDATED"
    # From the customer, via Vipps
    CUSTOMER_SCANNED = "CUSTOMER_SCANNED"
    # From the customer-club step
    IDENTIFY_FINISHED = "IDENTIFY_FINISHED"
    # Timers (worker / reconciler)
    SCAN_TIMED_OUT = "SCAN_TIMED_OUT"
    POS_UPDATE_TIMED_OUT = "POS_UPDATE_TIMED_OUT"
    # Results of our own Vipps calls (outbox)
    PAYMENT_CREATED = "PAYMENT_CREATED"
    PAYMENT_CREATE_REFUSED = "PAYMENT_CREATE_REFUSED"
    CANCEL_SUCCEEDED = "CANCEL_SUCCEEDED"
    CANCEL_REFUSED_ALREADY_AUTHORIZED = "CANCEL_REFUSED_ALREADY_AUTHORIZED"
    CANCEL_FAILED = "CANCEL_FAILED"
    CAPTURE_SUCCEEDED = "CAPTURE_SUCCEEDED"
    CAPTURE_FAILED = "CAPTURE_FAILED"
    REFUND_SUCCEEDED = "REFUND_SUCCEEDED"
    REFUND_FAILED = "REFUND_FAILED"
    # Payment state learnt from Vipps (webhook or poll)
    VIPPS_AUTHORIZED = "VIPPS_AUTHORIZED"
    VIPPS_ABORTED = "VIPPS_ABORTED"
    VIPPS_EXPIRED = "VIPPS_EXPIRED"
    VIPPS_TERMINATED = "VIPPS_TERMINATED"


class CommandKind(StrEnum):
    """Vipps calls the outbox performs. Each carries its own idempotency key."""

    EXCHANGE_TOKEN = "EXCHANGE_TOKEN"  # noqa: S105 (not a secret)
    CREATE_PAYMENT = "CREATE_PAYMENT"
    CAPTURE = "CAPTURE"
    CANCEL = "CANCEL"
    REFUND = "REFUND"


class Outcome(StrEnum):
    APPLIED = "APPLIED"  # state and/or money bookkeeping changed
    IGNORED = "IGNORED"  # duplicate, stale or irrelevant: acknowledge and do nothing
    ANOMALY = "ANOMALY"  # unexpected news from Vipps, handled safely and flagged for operators


class CapturePolicy(StrEnum):
    AUTO = "AUTO"
    MANUAL = "MANUAL"


class LateApprovalPolicy(StrEnum):
    """What to do when the customer approved before our cancel reached Vipps."""

    RELEASE = "release"
    KEEP = "keep"


@dataclass(frozen=True, slots=True)
class CheckoutFacts:
    """What :func:`decide` may know about a checkout. Amounts in minor units."""

    state: CheckoutState
    amount: int
    capture_mode: CapturePolicy = CapturePolicy.AUTO
    authorized: int = 0
    captured: int = 0
    refunded: int = 0
    cancelled: int = 0
    capture_pending: int = 0
    refund_pending: int = 0
    club_step: bool = False  # the store identifies members before paying
    member_price_hold: bool = False  # the till may change the amount after identification
    late_approval: LateApprovalPolicy = LateApprovalPolicy.RELEASE

    @property
    def capturable(self) -> int:
        return self.authorized - self.captured - self.cancelled - self.capture_pending

    @property
    def refundable(self) -> int:
        return self.captured - self.refunded - self.refund_pending


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    amount: int | None = None  # CAPTURE/REFUND requested amounts; VIPPS_AUTHORIZED amount
    # Absolute totals reported by Vipps (modification responses / GET aggregate).
    authorized_total: int | None = None
    captured_total: int | None = None
    refunded_total: int | None = None
    cancelled_total: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Command:
    kind: CommandKind
    amount: int | None = None
    cancel_transaction_only: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    state: CheckoutState
    outcome: Outcome
    commands: tuple[Command, ...] = ()
    # New money bookkeeping; None keeps the current value.
    authorized: int | None = None
    captured: int | None = None
    refunded: int | None = None
    cancelled: int | None = None
    capture_pending: int | None = None
    refund_pending: int | None = None
    capture_mode: CapturePolicy | None = None
    note: str | None = None

    @property
    def changes_state(self) -> bool:
        return self.outcome is Outcome.APPLIED


class InvalidTransition(Exception):
    """The event is not allowed in this state (a POS request the checkout cannot honour)."""

    def __init__(self, state: CheckoutState, event: EventKind, code: str, detail: str) -> None:
        super().__init__(f"{event} not allowed in {state}: {detail}")
        self.state = state
        self.event = event
        self.code = code
        self.detail = detail


Handler = Callable[[CheckoutFacts, Event], Decision]
S = CheckoutState
E = EventKind


def _to(state: CheckoutState, *commands: Command, note: str | None = None) -> Handler:
    def handler(facts: CheckoutFacts, event: Event) -> Decision:
        return Decision(state, Outcome.APPLIED, commands, note=note or event.reason)

    return handler


def _ignore(facts: CheckoutFacts, event: Event) -> Decision:
    return Decision(facts.state, Outcome.IGNORED)


def _refuse(code: str, detail: str) -> Handler:
    def handler(facts: CheckoutFacts, event: Event) -> Decision:
        raise InvalidTransition(facts.state, event.kind, code, detail)

    return handler


_REQUEST_PAYMENT = Command(CommandKind.CREATE_PAYMENT)


def _on_scan(facts: CheckoutFacts, event: Event) -> Decision:
    if facts.club_step:
        return Decision(S.IDENTIFYING, Outcome.APPLIED, (Command(CommandKind.EXCHANGE_TOKEN),))
    return Decision(S.PAYMENT_REQUESTED, Outcome.APPLIED, (_REQUEST_PAYMENT,))


def _on_identified(facts: CheckoutFacts, event: Event) -> Decision:
    if facts.member_price_hold:
        return Decision(S.AWAITING_POS_UPDATE, Outcome.APPLIED, note=event.reason)
    return Decision(S.PAYMENT_REQUESTED, Outcome.APPLIED, (_REQUEST_PAYMENT,), note=event.reason)


def _capture_all(facts: CheckoutFacts, authorized: int) -> tuple[Command, ...]:
    remaining = authorized - facts.captured - facts.cancelled - facts.capture_pending
    if facts.capture_mode is CapturePolicy.AUTO and remaining > 0:
        return (Command(CommandKind.CAPTURE, amount=remaining),)
    return ()


def _on_authorized(facts: CheckoutFacts, event: Event) -> Decision:
    authorized = event.authorized_total or event.amount or facts.amount
    commands = _capture_all(facts, authorized)
    pending = facts.capture_pending + sum(c.amount or 0 for c in commands)
    return Decision(
        S.AUTHORIZED,
        Outcome.APPLIED,
        commands,
        authorized=authorized,
        capture_pending=pending,
    )


def _on_authorized_while_cancelling(facts: CheckoutFacts, event: Event) -> Decision:
    # The cancel (cancelTransactionOnly) is already on its way and will be refused with 6060;
    # its result applies the late-approval policy. Record the reservation meanwhile.
    authorized = event.authorized_total or event.amount or facts.amount
    return Decision(S.CANCELLING, Outcome.APPLIED, authorized=authorized)


def _release_late_authorization(facts: CheckoutFacts, event: Event) -> Decision:
    # Vipps says the customer approved a checkout we already closed without payment. Nobody will
    # capture it, so release the reservation (a full cancel) and keep our final state.
    authorized = event.authorized_total or event.amount or facts.amount
    if facts.authorized:
        return Decision(facts.state, Outcome.IGNORED)
    return Decision(
        facts.state,
        Outcome.ANOMALY,
        (Command(CommandKind.CANCEL),),
        authorized=authorized,
        note="authorized after the checkout had ended; reservation released",
    )


def _on_cancel_request(facts: CheckoutFacts, event: Event) -> Decision:
    if facts.state is S.PAYMENT_REQUESTED:
        # cancelTransactionOnly: succeeds only if the customer has not approved yet, so a
        # concurrent approval is never silently released (REFERENCE.md §7.6).
        return Decision(
            S.CANCELLING,
            Outcome.APPLIED,
            (Command(CommandKind.CANCEL, cancel_transaction_only=True),),
        )
    if facts.state is S.AUTHORIZED:
        if facts.capture_pending or facts.captured:
            raise InvalidTransition(
                facts.state, event.kind, "capture_in_progress", "money is being captured; refund it"
            )
        return Decision(S.CANCELLING, Outcome.APPLIED, (Command(CommandKind.CANCEL),))
    if facts.state is S.CANCELLING:
        return Decision(facts.state, Outcome.IGNORED)
    # Nothing sent to Vipps yet: cancel locally.
    return Decision(S.CANCELLED, Outcome.APPLIED, note=event.reason or "cancelled by the till")


def _on_cancel_refused_authorized(facts: CheckoutFacts, event: Event) -> Decision:
    if facts.late_approval is LateApprovalPolicy.KEEP:
        return Decision(
            S.AUTHORIZED,
            Outcome.APPLIED,
            authorized=facts.authorized or facts.amount,
            capture_mode=CapturePolicy.MANUAL,
            note="customer approved before the cancel; reservation kept for the till",
        )
    return Decision(
        S.CANCELLING,
        Outcome.APPLIED,
        (Command(CommandKind.CANCEL),),
        authorized=facts.authorized or facts.amount,
        note="customer approved before the cancel; reservation released",
    )


def _on_cancelled(facts: CheckoutFacts, event: Event) -> Decision:
    cancelled = event.cancelled_total if event.cancelled_total is not None else facts.cancelled
    if facts.state is S.AUTHORIZED:
        # Release of the remainder after a partial manual capture.
        if facts.captured > 0:
            return Decision(S.CAPTURED, Outcome.APPLIED, cancelled=cancelled)
        return Decision(S.CANCELLED, Outcome.APPLIED, cancelled=cancelled)
    if facts.state is S.CANCELLING:
        return Decision(S.CANCELLED, Outcome.APPLIED, cancelled=cancelled, note=event.reason)
    return Decision(facts.state, Outcome.IGNORED, cancelled=cancelled)


def _on_capture_request(facts: CheckoutFacts, event: Event) -> Decision:
    amount = event.amount if event.amount is not None else facts.capturable
    if amount <= 0:
        raise InvalidTransition(facts.state, event.kind, "invalid_amount", "nothing to capture")
    if amount > facts.capturable:
        raise InvalidTransition(
            facts.state,
            event.kind,
            "amount_exceeds_authorized",
            f"at most {facts.capturable} can be captured",
        )
    commands: list[Command] = [Command(CommandKind.CAPTURE, amount=amount)]
    remainder = facts.capturable - amount
    if remainder > 0:
        commands.append(Command(CommandKind.CANCEL))  # release what will not be captured
    return Decision(
        S.AUTHORIZED,
        Outcome.APPLIED,
        tuple(commands),
        capture_pending=facts.capture_pending + amount,
    )


def _on_capture_succeeded(facts: CheckoutFacts, event: Event) -> Decision:
    captured = event.captured_total if event.captured_total is not None else facts.captured
    pending = max(0, facts.capture_pending - max(0, captured - facts.captured))
    cancelled = event.cancelled_total if event.cancelled_total is not None else facts.cancelled
    authorized = facts.authorized or facts.amount
    done = captured + cancelled >= authorized
    state = S.CAPTURED if done and facts.state is S.AUTHORIZED else facts.state
    return Decision(
        state,
        Outcome.APPLIED,
        captured=captured,
        capture_pending=pending,
        cancelled=cancelled,
    )


def _on_capture_failed(facts: CheckoutFacts, event: Event) -> Decision:
    return Decision(
        facts.state,
        Outcome.ANOMALY,
        capture_pending=max(0, facts.capture_pending - (event.amount or facts.capture_pending)),
        note=event.reason or "capture refused by Vipps",
    )


def _on_refund_request(facts: CheckoutFacts, event: Event) -> Decision:
    amount = event.amount if event.amount is not None else facts.refundable
    if amount <= 0:
        raise InvalidTransition(facts.state, event.kind, "invalid_amount", "nothing to refund")
    if amount > facts.refundable:
        raise InvalidTransition(
            facts.state,
            event.kind,
            "amount_exceeds_captured",
            f"at most {facts.refundable} can be refunded",
        )
    return Decision(
        facts.state,
        Outcome.APPLIED,
        (Command(CommandKind.REFUND, amount=amount),),
        refund_pending=facts.refund_pending + amount,
    )


def _on_refund_succeeded(facts: CheckoutFacts, event: Event) -> Decision:
    refunded = event.refunded_total if event.refunded_total is not None else facts.refunded
    settled = max(0, refunded - facts.refunded)
    pending = max(0, facts.refund_pending - settled)
    if refunded <= 0:
        state = facts.state
    elif refunded >= facts.captured:
        state = S.REFUNDED
    else:
        state = S.PARTIALLY_REFUNDED
    return Decision(state, Outcome.APPLIED, refunded=refunded, refund_pending=pending)


def _on_refund_failed(facts: CheckoutFacts, event: Event) -> Decision:
    return Decision(
        facts.state,
        Outcome.ANOMALY,
        refund_pending=max(0, facts.refund_pending - (event.amount or facts.refund_pending)),
        note=event.reason or "refund refused by Vipps",
    )


def _on_pos_update_late(facts: CheckoutFacts, event: Event) -> Decision:
    raise InvalidTransition(
        facts.state, event.kind, "update_window_closed", "the payment request was already sent"
    )


_ALREADY_FINAL = _refuse("checkout_final", "the checkout has already ended")
_NOT_PAID = _refuse("not_captured", "nothing has been captured")
_NOT_AUTHORIZED = _refuse("not_authorized", "the customer has not authorized the payment")


def _table() -> dict[tuple[CheckoutState, EventKind], Handler]:
    """The transition table. Every pair not listed is :data:`_DEFAULTS`'s for that event."""
    t: dict[tuple[CheckoutState, EventKind], Handler] = {}

    # Scans. A scan at a till whose checkout already has a customer is set aside by the service
    # before it reaches here; in the table it is simply not applicable (ignored).
    t[S.AWAITING_SCAN, E.CUSTOMER_SCANNED] = _on_scan
    t[S.AWAITING_SCAN, E.SCAN_TIMED_OUT] = _to(S.EXPIRED, note="nobody scanned in time")

    t[S.IDENTIFYING, E.IDENTIFY_FINISHED] = _on_identified
    t[S.AWAITING_POS_UPDATE, E.POS_UPDATED] = _to(S.PAYMENT_REQUESTED, _REQUEST_PAYMENT)
    t[S.AWAITING_POS_UPDATE, E.POS_UPDATE_TIMED_OUT] = _to(
        S.PAYMENT_REQUESTED, _REQUEST_PAYMENT, note="no member price in time; original amount"
    )
    for state in (S.AWAITING_SCAN, S.IDENTIFYING):
        t[state, E.POS_UPDATED] = _refuse(
            "update_not_expected", "the checkout is not waiting for a member price"
        )
    for state in (S.PAYMENT_REQUESTED, S.CANCELLING, S.AUTHORIZED):
        t[state, E.POS_UPDATED] = _on_pos_update_late

    # Cancel from the till.
    for state in ACTIVE_STATES:
        t[state, E.CANCEL_REQUESTED] = _on_cancel_request

    # The create-payment call.
    t[S.PAYMENT_REQUESTED, E.PAYMENT_CREATED] = _ignore  # bookkeeping only: now we poll
    t[S.PAYMENT_REQUESTED, E.PAYMENT_CREATE_REFUSED] = _to(S.FAILED)
    t[S.CANCELLING, E.PAYMENT_CREATE_REFUSED] = _to(S.CANCELLED)

    # Payment state from Vipps.
    t[S.PAYMENT_REQUESTED, E.VIPPS_AUTHORIZED] = _on_authorized
    t[S.CANCELLING, E.VIPPS_AUTHORIZED] = _on_authorized_while_cancelling
    t[S.PAYMENT_REQUESTED, E.VIPPS_ABORTED] = _to(S.REJECTED, note="declined in the app")
    t[S.PAYMENT_REQUESTED, E.VIPPS_EXPIRED] = _to(S.EXPIRED, note="not approved in time")
    t[S.PAYMENT_REQUESTED, E.VIPPS_TERMINATED] = _to(S.CANCELLED, note="cancelled at Vipps")
    t[S.CANCELLING, E.VIPPS_ABORTED] = _to(S.CANCELLED, note="declined in the app")
    t[S.CANCELLING, E.VIPPS_EXPIRED] = _to(S.CANCELLED, note="expired while cancelling")
    t[S.CANCELLING, E.VIPPS_TERMINATED] = _on_cancelled
    for state in UNPAID_FINAL_STATES:
        t[state, E.VIPPS_AUTHORIZED] = _release_late_authorization

    # Cancel results.
    t[S.CANCELLING, E.CANCEL_SUCCEEDED] = _on_cancelled
    t[S.AUTHORIZED, E.CANCEL_SUCCEEDED] = _on_cancelled
    t[S.CANCELLING, E.CANCEL_REFUSED_ALREADY_AUTHORIZED] = _on_cancel_refused_authorized
    for state in UNPAID_FINAL_STATES | PAID_STATES:
        t[state, E.CANCEL_SUCCEEDED] = _on_cancelled  # late release: bookkeeping only

    # Capture.
    t[S.AUTHORIZED, E.CAPTURE_REQUESTED] = _on_capture_request
    t[S.AUTHORIZED, E.CAPTURE_SUCCEEDED] = _on_capture_succeeded
    t[S.AUTHORIZED, E.CAPTURE_FAILED] = _on_capture_failed
    for state in PAID_STATES:
        t[state, E.CAPTURE_SUCCEEDED] = _on_capture_succeeded  # totals only, state kept
        t[state, E.CAPTURE_REQUESTED] = _refuse("already_captured", "the payment is captured")

    # Refund.
    for state in (S.CAPTURED, S.PARTIALLY_REFUNDED):
        t[state, E.REFUND_REQUESTED] = _on_refund_request
    for state in PAID_STATES:
        t[state, E.REFUND_SUCCEEDED] = _on_refund_succeeded
        t[state, E.REFUND_FAILED] = _on_refund_failed
    t[S.REFUNDED, E.REFUND_REQUESTED] = _refuse("already_refunded", "fully refunded")
    return t


def _default(event: EventKind) -> Handler:
    """What an event does in a state the table does not list."""
    match event:
        case E.CANCEL_REQUESTED | E.POS_UPDATED:
            return _ALREADY_FINAL
        case E.CAPTURE_REQUESTED:
            return _NOT_AUTHORIZED
        case E.REFUND_REQUESTED:
            return _NOT_PAID
        case (
            E.CUSTOMER_SCANNED
            | E.IDENTIFY_FINISHED
            | E.SCAN_TIMED_OUT
            | E.POS_UPDATE_TIMED_OUT
            | E.PAYMENT_CREATED
            | E.PAYMENT_CREATE_REFUSED
            | E.CANCEL_SUCCEEDED
            | E.CANCEL_REFUSED_ALREADY_AUTHORIZED
            | E.CANCEL_FAILED
            | E.CAPTURE_SUCCEEDED
            | E.CAPTURE_FAILED
            | E.REFUND_SUCCEEDED
            | E.REFUND_FAILED
            | E.VIPPS_AUTHORIZED
            | E.VIPPS_ABORTED
            | E.VIPPS_EXPIRED
            | E.VIPPS_TERMINATED
        ):
            # Stale, duplicate or reordered news: acknowledge, change nothing.
            return _ignore
        case _:
            assert_never(event)


TRANSITIONS: dict[tuple[CheckoutState, EventKind], Handler] = _table()


def decide(facts: CheckoutFacts, event: Event) -> Decision:
    """The single entry point: what ``event`` does to a checkout described by ``facts``.

    Pure and total: returns a :class:`Decision` for every pair, or raises
    :class:`InvalidTransition` for a till request the checkout cannot honour.
    """
    handler = TRANSITIONS.get((facts.state, event.kind)) or _default(event.kind)
    return handler(facts, event)
