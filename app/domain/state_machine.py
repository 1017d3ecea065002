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
* Money totals only grow: Vipps reports absolute totals, and an older (smaller) report never
  overwrites a newer one.
* Calls in flight are *facts*, not bookkeeping: the service derives ``capture_pending``,
  ``refund_pending`` and ``cancel_pending`` from the unfinished outbox commands, so a result
  applied twice cannot count twice.
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
    IDENTIFY_TIMED_OUT = "IDENTIFY_TIMED_OUT"
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
    # Derived from unfinished outbox commands by the service.
    capture_pending: int = 0
    refund_pending: int = 0
    cancel_pending: bool = False
    club_step: bool = False  # the store identifies members before paying
    member_price_hold: bool = False  # the till may change the amount after identification
    late_approval: LateApprovalPolicy = LateApprovalPolicy.RELEASE

    @property
    def capture_ceiling(self) -> int:
        """Never capture more than the sale, even if Vipps reserved more."""
        return min(self.authorized, self.amount)

    @property
    def capturable(self) -> int:
        if self.cancel_pending:
            return 0  # the rest of the reservation is being released
        return max(0, self.capture_ceiling - self.captured - self.cancelled - self.capture_pending)

    @property
    def refundable(self) -> int:
        return max(0, self.captured - self.refunded - self.refund_pending)


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


def _grown(current: int, reported: int | None) -> int:
    """Vipps's totals only grow; a stale (smaller) report never rolls ours back."""
    return current if reported is None else max(current, reported)


def _on_scan(facts: CheckoutFacts, event: Event) -> Decision:
    if facts.club_step:
        return Decision(S.IDENTIFYING, Outcome.APPLIED, (Command(CommandKind.EXCHANGE_TOKEN),))
    return Decision(S.PAYMENT_REQUESTED, Outcome.APPLIED, (_REQUEST_PAYMENT,))


def _on_identified(facts: CheckoutFacts, event: Event) -> Decision:
    if facts.member_price_hold:
        return Decision(S.AWAITING_POS_UPDATE, Outcome.APPLIED, note=event.reason)
    return Decision(S.PAYMENT_REQUESTED, Outcome.APPLIED, (_REQUEST_PAYMENT,), note=event.reason)


def _authorized_amount(facts: CheckoutFacts, event: Event) -> int:
    reported = event.authorized_total or event.amount or facts.amount
    return max(facts.authorized, reported)


def _capture_all(facts: CheckoutFacts, authorized: int) -> tuple[Command, ...]:
    # Never more than the sale's amount, whatever the reservation says; a reservation above it
    # is released right after the capture.
    ceiling = min(authorized, facts.amount)
    remaining = ceiling - facts.captured - facts.cancelled - facts.capture_pending
    if facts.capture_mode is not CapturePolicy.AUTO or remaining <= 0 or facts.cancel_pending:
        return ()
    capture = Command(CommandKind.CAPTURE, amount=remaining)
    if authorized > facts.amount:
        return (capture, Command(CommandKind.CANCEL))
    return (capture,)


def _on_authorized(facts: CheckoutFacts, event: Event) -> Decision:
    authorized = _authorized_amount(facts, event)
    return Decision(
        S.AUTHORIZED, Outcome.APPLIED, _capture_all(facts, authorized), authorized=authorized
    )


def _on_authorized_while_cancelling(facts: CheckoutFacts, event: Event) -> Decision:
    authorized = _authorized_amount(facts, event)
    if facts.cancel_pending:
        # The cancel (cancelTransactionOnly) is on its way and will be refused with 6060; its
        # result applies the late-approval policy. Record the reservation meanwhile.
        return Decision(S.CANCELLING, Outcome.APPLIED, authorized=authorized)
    # Our cancel failed or is long gone: apply the late-approval policy now.
    return _late_approval(facts, authorized)


def _release_late_authorization(facts: CheckoutFacts, event: Event) -> Decision:
    # Vipps says the customer approved a checkout we already closed without payment. Nobody will
    # capture it, so release the reservation (a full cancel) and keep our final state.
    authorized = _authorized_amount(facts, event)
    if facts.authorized or facts.cancel_pending:
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
        if facts.cancel_pending:
            raise InvalidTransition(
                facts.state, event.kind, "release_in_progress", "the reservation is being released"
            )
        if facts.capture_pending or facts.captured:
            raise InvalidTransition(
                facts.state, event.kind, "capture_in_progress", "money is being captured; refund it"
            )
        return Decision(S.CANCELLING, Outcome.APPLIED, (Command(CommandKind.CANCEL),))
    if facts.state is S.CANCELLING:
        return Decision(facts.state, Outcome.IGNORED)
    # Nothing sent to Vipps yet: cancel locally.
    return Decision(S.CANCELLED, Outcome.APPLIED, note=event.reason or "cancelled by the till")


def _late_approval(facts: CheckoutFacts, authorized: int) -> Decision:
    if facts.late_approval is LateApprovalPolicy.KEEP:
        return Decision(
            S.AUTHORIZED,
            Outcome.APPLIED,
            authorized=authorized,
            capture_mode=CapturePolicy.MANUAL,
            note="customer approved before the cancel; reservation kept for the till",
        )
    if facts.cancel_pending:
        return Decision(S.CANCELLING, Outcome.IGNORED, authorized=authorized)  # release under way
    return Decision(
        S.CANCELLING,
        Outcome.APPLIED,
        (Command(CommandKind.CANCEL),),
        authorized=authorized,
        note="customer approved before the cancel; reservation released",
    )


def _on_cancel_refused_authorized(facts: CheckoutFacts, event: Event) -> Decision:
    return _late_approval(facts, max(facts.authorized, facts.amount))


def _on_cancelled(facts: CheckoutFacts, event: Event) -> Decision:
    cancelled = _grown(facts.cancelled, event.cancelled_total)
    if facts.state is S.AUTHORIZED:
        # Release of the remainder after a partial manual capture. With a capture still in
        # flight its result decides (CAPTURE_SUCCEEDED then finds captured + cancelled complete).
        if facts.capture_pending:
            return Decision(S.AUTHORIZED, Outcome.APPLIED, cancelled=cancelled)
        if facts.captured > 0:
            return Decision(S.CAPTURED, Outcome.APPLIED, cancelled=cancelled)
        return Decision(S.CANCELLED, Outcome.APPLIED, cancelled=cancelled)
    if facts.state is S.CANCELLING:
        return Decision(S.CANCELLED, Outcome.APPLIED, cancelled=cancelled, note=event.reason)
    return Decision(facts.state, Outcome.IGNORED, cancelled=cancelled)


def _on_release_failed(facts: CheckoutFacts, event: Event) -> Decision:
    # Releasing the rest after a partial capture was refused. The captured part is the sale;
    # the rest of the reservation lapses at Vipps on its own. Do not strand the till.
    if facts.captured > 0 and not facts.capture_pending:
        return Decision(
            S.CAPTURED,
            Outcome.ANOMALY,
            note=event.reason or "release of the uncaptured rest refused; it lapses at Vipps",
        )
    return Decision(facts.state, Outcome.IGNORED)


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
    return Decision(S.AUTHORIZED, Outcome.APPLIED, tuple(commands))


def _on_capture_succeeded(facts: CheckoutFacts, event: Event) -> Decision:
    captured = _grown(facts.captured, event.captured_total)
    cancelled = _grown(facts.cancelled, event.cancelled_total)
    authorized = min(facts.authorized or facts.amount, facts.amount)
    settled = captured + cancelled >= authorized and not facts.capture_pending
    state = S.CAPTURED if settled and facts.state is S.AUTHORIZED else facts.state
    outcome = (
        Outcome.APPLIED
        if state is not facts.state or (captured, cancelled) != (facts.captured, facts.cancelled)
        else Outcome.IGNORED
    )
    return Decision(state, outcome, captured=captured, cancelled=cancelled)


def _on_capture_failed(facts: CheckoutFacts, event: Event) -> Decision:
    # The failed command is no longer pending (the service derives that); just flag it.
    return Decision(facts.state, Outcome.ANOMALY, note=event.reason or "capture refused by Vipps")


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
    return Decision(facts.state, Outcome.APPLIED, (Command(CommandKind.REFUND, amount=amount),))


def _on_refund_succeeded(facts: CheckoutFacts, event: Event) -> Decision:
    refunded = _grown(facts.refunded, event.refunded_total)
    if refunded <= 0:
        state = facts.state
    elif refunded >= facts.captured:
        state = S.REFUNDED
    else:
        state = S.PARTIALLY_REFUNDED
    changed = state is not facts.state or refunded != facts.refunded
    return Decision(state, Outcome.APPLIED if changed else Outcome.IGNORED, refunded=refunded)


def _on_refund_failed(facts: CheckoutFacts, event: Event) -> Decision:
    # The failed command is no longer pending (the service derives that); just flag it.
    return Decision(facts.state, Outcome.ANOMALY, note=event.reason or "refund refused by Vipps")


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
    # The customer token must still be valid when the payment request goes out (15 minutes
    # from the scan): past the identification budget, pay without membership.
    t[S.IDENTIFYING, E.IDENTIFY_TIMED_OUT] = _to(
        S.PAYMENT_REQUESTED, _REQUEST_PAYMENT, note="identification took too long"
    )
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
    t[S.AUTHORIZED, E.CANCEL_FAILED] = _on_release_failed
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
            | E.IDENTIFY_TIMED_OUT
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
