"""The checkout state machine over every (state, event) pair, plus its money invariants.

``EXPECTED`` is the contract written out by hand from DESIGN.md §2 and the transition table: one
line per pair, so any change to what ``decide()`` does for a pair fails
:func:`test_every_pair_matches_the_table` until the table here is updated on purpose.

Calls in flight are facts the service derives from unfinished outbox commands, so the tests model
the outbox too: :class:`Checkout` is the stored bookkeeping plus the commands not yet finished,
and its ``facts`` always carry the pending amounts those commands add up to. :func:`step` plays
one event the way the service does: a result event first finishes the command it reports on, then
``decide()`` runs, then :func:`apply` persists the decision and queues its commands.

The properties run over random *consistent* facts (``captured <= authorized`` and so on, with
calls in flight) and random events, and over random event sequences played through :func:`step`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import app.models
from app.domain.state_machine import (
    ACTIVE_STATES,
    PAID_STATES,
    TRANSITIONS,
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
from tests.domain.histories import Step, World, histories, settle
from tests.support.properties import Reached

S = CheckoutState
E = EventKind
C = CommandKind
AMOUNT = 10000

# --------------------------------------------------------------------------------------------
# The service, modelled: stored bookkeeping plus the outbox commands still in flight
# --------------------------------------------------------------------------------------------

_BOOKKEEPING = ("authorized", "captured", "refunded", "cancelled", "capture_mode")

# The outbox command kinds whose being in flight is a fact decide() sees.
TRACKED_COMMANDS = frozenset({C.CAPTURE, C.REFUND, C.CANCEL})

# The command each result event reports on (the outbox worker finishes it, then applies the event).
RESULT_OF: dict[EventKind, CommandKind] = {
    E.CAPTURE_SUCCEEDED: C.CAPTURE,
    E.CAPTURE_FAILED: C.CAPTURE,
    E.REFUND_SUCCEEDED: C.REFUND,
    E.REFUND_FAILED: C.REFUND,
    E.CANCEL_SUCCEEDED: C.CANCEL,
    E.CANCEL_REFUSED_ALREADY_AUTHORIZED: C.CANCEL,
    E.CANCEL_FAILED: C.CANCEL,
}


@dataclass(frozen=True, slots=True)
class Checkout:
    """A checkout as the service holds it.

    Invariant: ``facts``'s ``capture_pending``/``refund_pending``/``cancel_pending`` are exactly
    what ``in_flight`` adds up to (build it with :func:`with_in_flight` or :meth:`of`).
    """

    facts: CheckoutFacts
    in_flight: tuple[Command, ...] = ()

    @classmethod
    def of(cls, facts: CheckoutFacts) -> Checkout:
        """The checkout whose outbox holds one command per pending fact of ``facts``."""
        commands: list[Command] = []
        if facts.capture_pending:
            commands.append(Command(C.CAPTURE, amount=facts.capture_pending))
        if facts.refund_pending:
            commands.append(Command(C.REFUND, amount=facts.refund_pending))
        if facts.cancel_pending:
            commands.append(Command(C.CANCEL))
        return with_in_flight(facts, tuple(commands))


def with_in_flight(facts: CheckoutFacts, in_flight: tuple[Command, ...]) -> Checkout:
    """``facts`` with its pending fields derived from ``in_flight``, as the service does."""
    derived = replace(
        facts,
        capture_pending=sum(c.amount or 0 for c in in_flight if c.kind is C.CAPTURE),
        refund_pending=sum(c.amount or 0 for c in in_flight if c.kind is C.REFUND),
        cancel_pending=any(c.kind is C.CANCEL for c in in_flight),
    )
    return Checkout(derived, in_flight)


def finish(checkout: Checkout, event: Event) -> Checkout:
    """The outbox marks the command ``event`` reports on as finished (done or failed).

    The command is the oldest in flight of the result's kind; a failure names its amount, so it
    finishes the command of that amount. News that is no result of ours finishes nothing.
    """
    kind = RESULT_OF.get(event.kind)
    candidates = [i for i, command in enumerate(checkout.in_flight) if command.kind is kind]
    if event.amount is not None:
        candidates = [i for i in candidates if checkout.in_flight[i].amount == event.amount]
    if not candidates:
        return checkout
    index = candidates[0]
    remaining = checkout.in_flight[:index] + checkout.in_flight[index + 1 :]
    return with_in_flight(checkout.facts, remaining)


def apply(checkout: Checkout, decision: Decision) -> Checkout:
    """The checkout after persisting ``decision``: its state and bookkeeping, its calls queued."""
    changes: dict[str, Any] = {
        name: getattr(decision, name)
        for name in _BOOKKEEPING
        if getattr(decision, name) is not None
    }
    queued = tuple(c for c in decision.commands if c.kind in TRACKED_COMMANDS)
    facts = replace(checkout.facts, state=decision.state, **changes)
    return with_in_flight(facts, checkout.in_flight + queued)


@dataclass(frozen=True, slots=True)
class Redelivered:
    """News applied again (a webhook retry, a poll): no outbox command finishes with it."""

    event: Event


def step(checkout: Checkout, news: Event | Redelivered) -> tuple[Checkout, Decision]:
    """One event as the service applies it: finish its command, decide, persist."""
    if isinstance(news, Redelivered):
        event = news.event
    else:
        event = news
        checkout = finish(checkout, event)
    decision = decide(checkout.facts, event)
    return apply(checkout, decision), decision


def run(
    start: CheckoutFacts | Checkout, *events: Event | Redelivered
) -> tuple[Checkout, list[Decision]]:
    """Play ``events`` in order; returns the final checkout and every decision."""
    checkout = start if isinstance(start, Checkout) else Checkout.of(start)
    decisions: list[Decision] = []
    for event in events:
        checkout, decision = step(checkout, event)
        decisions.append(decision)
    return checkout, decisions


def commands_of(decisions: list[Decision]) -> list[Command]:
    return [command for decision in decisions for command in decision.commands]


def _is_vipps_originated(kind: EventKind) -> bool:
    """Vipps news or the result of one of our Vipps calls: it must always be acknowledged."""
    return (
        kind.startswith("VIPPS_")
        or kind.endswith(("_SUCCEEDED", "_FAILED"))
        or "_REFUSED" in kind
        or kind is E.PAYMENT_CREATED
    )


VIPPS_EVENTS = frozenset(kind for kind in E if _is_vipps_originated(kind))
TILL_REQUESTS = frozenset(
    {E.CANCEL_REQUESTED, E.CAPTURE_REQUESTED, E.REFUND_REQUESTED, E.POS_UPDATED}
)


def test_the_outbox_model_finishes_exactly_the_reported_command() -> None:
    facts = CheckoutFacts(S.AUTHORIZED, AMOUNT, authorized=AMOUNT)
    checkout = with_in_flight(
        facts, (Command(C.CAPTURE, amount=4000), Command(C.CAPTURE, amount=6000))
    )
    assert (checkout.facts.capture_pending, checkout.facts.cancel_pending) == (AMOUNT, False)
    failed = finish(checkout, Event(E.CAPTURE_FAILED, amount=6000))
    assert failed.in_flight == (Command(C.CAPTURE, amount=4000),)
    assert failed.facts.capture_pending == 4000
    assert finish(failed, Event(E.CAPTURE_FAILED, amount=6000)) == failed
    assert finish(checkout, Event(E.VIPPS_AUTHORIZED)) == checkout


# --------------------------------------------------------------------------------------------
# The table: every pair, with representative facts and events
# --------------------------------------------------------------------------------------------

REPRESENTATIVE_FACTS: dict[CheckoutState, CheckoutFacts] = {
    S.AWAITING_SCAN: CheckoutFacts(S.AWAITING_SCAN, AMOUNT),
    S.IDENTIFYING: CheckoutFacts(S.IDENTIFYING, AMOUNT, club_step=True),
    S.AWAITING_POS_UPDATE: CheckoutFacts(
        S.AWAITING_POS_UPDATE, AMOUNT, club_step=True, member_price_hold=True
    ),
    S.PAYMENT_REQUESTED: CheckoutFacts(S.PAYMENT_REQUESTED, AMOUNT),
    # The till's cancel (cancelTransactionOnly) is on its way to Vipps.
    S.CANCELLING: CheckoutFacts(S.CANCELLING, AMOUNT, cancel_pending=True),
    # Manual mode with nothing captured yet, so the till may still capture or cancel.
    S.AUTHORIZED: CheckoutFacts(
        S.AUTHORIZED, AMOUNT, capture_mode=CapturePolicy.MANUAL, authorized=AMOUNT
    ),
    S.CAPTURED: CheckoutFacts(S.CAPTURED, AMOUNT, authorized=AMOUNT, captured=AMOUNT),
    S.PARTIALLY_REFUNDED: CheckoutFacts(
        S.PARTIALLY_REFUNDED, AMOUNT, authorized=AMOUNT, captured=AMOUNT, refunded=4000
    ),
    S.REFUNDED: CheckoutFacts(
        S.REFUNDED, AMOUNT, authorized=AMOUNT, captured=AMOUNT, refunded=AMOUNT
    ),
    S.CANCELLED: CheckoutFacts(S.CANCELLED, AMOUNT),
    S.REJECTED: CheckoutFacts(S.REJECTED, AMOUNT),
    S.EXPIRED: CheckoutFacts(S.EXPIRED, AMOUNT),
    S.FAILED: CheckoutFacts(S.FAILED, AMOUNT),
}

REPRESENTATIVE_EVENTS: dict[EventKind, Event] = {
    kind: Event(kind, reason="representative") for kind in E
} | {
    E.VIPPS_AUTHORIZED: Event(E.VIPPS_AUTHORIZED, amount=AMOUNT),
    E.CAPTURE_SUCCEEDED: Event(E.CAPTURE_SUCCEEDED, captured_total=AMOUNT),
    E.REFUND_SUCCEEDED: Event(E.REFUND_SUCCEEDED, refunded_total=AMOUNT),
    E.CANCEL_SUCCEEDED: Event(E.CANCEL_SUCCEEDED, cancelled_total=AMOUNT),
}

# Each pair is played with step(): a result event first finishes the representative checkout's
# command in flight (only CANCELLING has one).
# Notation: "<target state>" (applied), "anomaly:<state>", "ignored", or "refused:<code>",
# followed by the commands emitted: CREATE_PAYMENT, EXCHANGE_TOKEN, CAPTURE=<amount>,
# REFUND=<amount>, CANCEL (full) or CANCEL~tx (cancelTransactionOnly).
EXPECTED_TABLE = """
AWAITING_SCAN        CANCEL_REQUESTED                   CANCELLED
AWAITING_SCAN        CAPTURE_REQUESTED                  refused:not_authorized
AWAITING_SCAN        REFUND_REQUESTED                   refused:not_captured
AWAITING_SCAN        POS_UPDATED                        refused:update_not_expected
AWAITING_SCAN        CUSTOMER_SCANNED                   PAYMENT_REQUESTED CREATE_PAYMENT
AWAITING_SCAN        IDENTIFY_FINISHED                  ignored
AWAITING_SCAN        SCAN_TIMED_OUT                     EXPIRED
AWAITING_SCAN        IDENTIFY_TIMED_OUT                 ignored
AWAITING_SCAN        POS_UPDATE_TIMED_OUT               ignored
AWAITING_SCAN        PAYMENT_CREATED                    ignored
AWAITING_SCAN        PAYMENT_CREATE_REFUSED             ignored
AWAITING_SCAN        CANCEL_SUCCEEDED                   ignored
AWAITING_SCAN        CANCEL_REFUSED_ALREADY_AUTHORIZED  ignored
AWAITING_SCAN        CANCEL_FAILED                      ignored
AWAITING_SCAN        CAPTURE_SUCCEEDED                  ignored
AWAITING_SCAN        CAPTURE_FAILED                     ignored
AWAITING_SCAN        REFUND_SUCCEEDED                   ignored
AWAITING_SCAN        REFUND_FAILED                      ignored
AWAITING_SCAN        VIPPS_AUTHORIZED                   ignored
AWAITING_SCAN        VIPPS_ABORTED                      ignored
AWAITING_SCAN        VIPPS_EXPIRED                      ignored
AWAITING_SCAN        VIPPS_TERMINATED                   ignored
IDENTIFYING          CANCEL_REQUESTED                   CANCELLED
IDENTIFYING          CAPTURE_REQUESTED                  refused:not_authorized
IDENTIFYING          REFUND_REQUESTED                   refused:not_captured
IDENTIFYING          POS_UPDATED                        refused:update_not_expected
IDENTIFYING          CUSTOMER_SCANNED                   ignored
IDENTIFYING          IDENTIFY_FINISHED                  PAYMENT_REQUESTED CREATE_PAYMENT
IDENTIFYING          SCAN_TIMED_OUT                     ignored
IDENTIFYING          IDENTIFY_TIMED_OUT                 PAYMENT_REQUESTED CREATE_PAYMENT
IDENTIFYING          POS_UPDATE_TIMED_OUT               ignored
IDENTIFYING          PAYMENT_CREATED                    ignored
IDENTIFYING          PAYMENT_CREATE_REFUSED             ignored
IDENTIFYING          CANCEL_SUCCEEDED                   ignored
IDENTIFYING          CANCEL_REFUSED_ALREADY_AUTHORIZED  ignored
IDENTIFYING          CANCEL_FAILED                      ignored
IDENTIFYING          CAPTURE_SUCCEEDED                  ignored
IDENTIFYING          CAPTURE_FAILED                     ignored
IDENTIFYING          REFUND_SUCCEEDED                   ignored
IDENTIFYING          REFUND_FAILED                      ignored
IDENTIFYING          VIPPS_AUTHORIZED                   ignored
IDENTIFYING          VIPPS_ABORTED                      ignored
IDENTIFYING          VIPPS_EXPIRED                      ignored
IDENTIFYING          VIPPS_TERMINATED                   ignored
AWAITING_POS_UPDATE  CANCEL_REQUESTED                   CANCELLED
AWAITING_POS_UPDATE  CAPTURE_REQUESTED                  refused:not_authorized
AWAITING_POS_UPDATE  REFUND_REQUESTED                   refused:not_captured
AWAITING_POS_UPDATE  POS_UPDATED                        PAYMENT_REQUESTED CREATE_PAYMENT
AWAITING_POS_UPDATE  CUSTOMER_SCANNED                   ignored
AWAITING_POS_UPDATE  IDENTIFY_FINISHED                  ignored
AWAITING_POS_UPDATE  SCAN_TIMED_OUT                     ignored
AWAITING_POS_UPDATE  IDENTIFY_TIMED_OUT                 ignored
AWAITING_POS_UPDATE  POS_UPDATE_TIMED_OUT               PAYMENT_REQUESTED CREATE_PAYMENT
AWAITING_POS_UPDATE  PAYMENT_CREATED                    ignored
AWAITING_POS_UPDATE  PAYMENT_CREATE_REFUSED             ignored
AWAITING_POS_UPDATE  CANCEL_SUCCEEDED                   ignored
AWAITING_POS_UPDATE  CANCEL_REFUSED_ALREADY_AUTHORIZED  ignored
AWAITING_POS_UPDATE  CANCEL_FAILED                      ignored
AWAITING_POS_UPDATE  CAPTURE_SUCCEEDED                  ignored
AWAITING_POS_UPDATE  CAPTURE_FAILED                     ignored
AWAITING_POS_UPDATE  REFUND_SUCCEEDED                   ignored
AWAITING_POS_UPDATE  REFUND_FAILED                      ignored
AWAITING_POS_UPDATE  VIPPS_AUTHORIZED                   ignored
AWAITING_POS_UPDATE  VIPPS_ABORTED                      ignored
AWAITING_POS_UPDATE  VIPPS_EXPIRED                      ignored
AWAITING_POS_UPDATE  VIPPS_TERMINATED                   ignored
PAYMENT_REQUESTED    CANCEL_REQUESTED                   CANCELLING CANCEL~tx
PAYMENT_REQUESTED    CAPTURE_REQUESTED                  refused:not_authorized
PAYMENT_REQUESTED    REFUND_REQUESTED                   refused:not_captured
PAYMENT_REQUESTED    POS_UPDATED                        refused:update_window_closed
PAYMENT_REQUESTED    CUSTOMER_SCANNED                   ignored
PAYMENT_REQUESTED    IDENTIFY_FINISHED                  ignored
PAYMENT_REQUESTED    SCAN_TIMED_OUT                     ignored
PAYMENT_REQUESTED    IDENTIFY_TIMED_OUT                 ignored
PAYMENT_REQUESTED    POS_UPDATE_TIMED_OUT               ignored
PAYMENT_REQUESTED    PAYMENT_CREATED                    ignored
PAYMENT_REQUESTED    PAYMENT_CREATE_REFUSED             FAILED
PAYMENT_REQUESTED    CANCEL_SUCCEEDED                   ignored
PAYMENT_REQUESTED    CANCEL_REFUSED_ALREADY_AUTHORIZED  ignored
PAYMENT_REQUESTED    CANCEL_FAILED                      ignored
PAYMENT_REQUESTED    CAPTURE_SUCCEEDED                  ignored
PAYMENT_REQUESTED    CAPTURE_FAILED                     ignored
PAYMENT_REQUESTED    REFUND_SUCCEEDED                   ignored
PAYMENT_REQUESTED    REFUND_FAILED                      ignored
PAYMENT_REQUESTED    VIPPS_AUTHORIZED                   AUTHORIZED CAPTURE=10000
PAYMENT_REQUESTED    VIPPS_ABORTED                      REJECTED
PAYMENT_REQUESTED    VIPPS_EXPIRED                      EXPIRED
PAYMENT_REQUESTED    VIPPS_TERMINATED                   CANCELLED
CANCELLING           CANCEL_REQUESTED                   ignored
CANCELLING           CAPTURE_REQUESTED                  refused:not_authorized
CANCELLING           REFUND_REQUESTED                   refused:not_captured
CANCELLING           POS_UPDATED                        refused:update_window_closed
CANCELLING           CUSTOMER_SCANNED                   ignored
CANCELLING           IDENTIFY_FINISHED                  ignored
CANCELLING           SCAN_TIMED_OUT                     ignored
CANCELLING           IDENTIFY_TIMED_OUT                 ignored
CANCELLING           POS_UPDATE_TIMED_OUT               ignored
CANCELLING           PAYMENT_CREATED                    ignored
CANCELLING           PAYMENT_CREATE_REFUSED             CANCELLED
CANCELLING           CANCEL_SUCCEEDED                   CANCELLED
CANCELLING           CANCEL_REFUSED_ALREADY_AUTHORIZED  CANCELLING CANCEL
CANCELLING           CANCEL_FAILED                      ignored
CANCELLING           CAPTURE_SUCCEEDED                  ignored
CANCELLING           CAPTURE_FAILED                     ignored
CANCELLING           REFUND_SUCCEEDED                   ignored
CANCELLING           REFUND_FAILED                      ignored
CANCELLING           VIPPS_AUTHORIZED                   CANCELLING
CANCELLING           VIPPS_ABORTED                      CANCELLED
CANCELLING           VIPPS_EXPIRED                      CANCELLED
CANCELLING           VIPPS_TERMINATED                   CANCELLED
AUTHORIZED           CANCEL_REQUESTED                   CANCELLING CANCEL
AUTHORIZED           CAPTURE_REQUESTED                  AUTHORIZED CAPTURE=10000
AUTHORIZED           REFUND_REQUESTED                   refused:not_captured
AUTHORIZED           POS_UPDATED                        refused:update_window_closed
AUTHORIZED           CUSTOMER_SCANNED                   ignored
AUTHORIZED           IDENTIFY_FINISHED                  ignored
AUTHORIZED           SCAN_TIMED_OUT                     ignored
AUTHORIZED           IDENTIFY_TIMED_OUT                 ignored
AUTHORIZED           POS_UPDATE_TIMED_OUT               ignored
AUTHORIZED           PAYMENT_CREATED                    ignored
AUTHORIZED           PAYMENT_CREATE_REFUSED             ignored
AUTHORIZED           CANCEL_SUCCEEDED                   CANCELLED
AUTHORIZED           CANCEL_REFUSED_ALREADY_AUTHORIZED  ignored
AUTHORIZED           CANCEL_FAILED                      ignored
AUTHORIZED           CAPTURE_SUCCEEDED                  CAPTURED
AUTHORIZED           CAPTURE_FAILED                     anomaly:AUTHORIZED
AUTHORIZED           REFUND_SUCCEEDED                   ignored
AUTHORIZED           REFUND_FAILED                      ignored
AUTHORIZED           VIPPS_AUTHORIZED                   ignored
AUTHORIZED           VIPPS_ABORTED                      ignored
AUTHORIZED           VIPPS_EXPIRED                      ignored
AUTHORIZED           VIPPS_TERMINATED                   ignored
CAPTURED             CANCEL_REQUESTED                   refused:checkout_final
CAPTURED             CAPTURE_REQUESTED                  refused:already_captured
CAPTURED             REFUND_REQUESTED                   CAPTURED REFUND=10000
CAPTURED             POS_UPDATED                        refused:checkout_final
CAPTURED             CUSTOMER_SCANNED                   ignored
CAPTURED             IDENTIFY_FINISHED                  ignored
CAPTURED             SCAN_TIMED_OUT                     ignored
CAPTURED             IDENTIFY_TIMED_OUT                 ignored
CAPTURED             POS_UPDATE_TIMED_OUT               ignored
CAPTURED             PAYMENT_CREATED                    ignored
CAPTURED             PAYMENT_CREATE_REFUSED             ignored
CAPTURED             CANCEL_SUCCEEDED                   ignored
CAPTURED             CANCEL_REFUSED_ALREADY_AUTHORIZED  ignored
CAPTURED             CANCEL_FAILED                      ignored
CAPTURED             CAPTURE_SUCCEEDED                  ignored
CAPTURED             CAPTURE_FAILED                     ignored
CAPTURED             REFUND_SUCCEEDED                   REFUNDED
CAPTURED             REFUND_FAILED                      anomaly:CAPTURED
CAPTURED             VIPPS_AUTHORIZED                   ignored
CAPTURED             VIPPS_ABORTED                      ignored
CAPTURED             VIPPS_EXPIRED                      ignored
CAPTURED             VIPPS_TERMINATED                   ignored
PARTIALLY_REFUNDED   CANCEL_REQUESTED                   refused:checkout_final
PARTIALLY_REFUNDED   CAPTURE_REQUESTED                  refused:already_captured
PARTIALLY_REFUNDED   REFUND_REQUESTED                   PARTIALLY_REFUNDED REFUND=6000
PARTIALLY_REFUNDED   POS_UPDATED                        refused:checkout_final
PARTIALLY_REFUNDED   CUSTOMER_SCANNED                   ignored
PARTIALLY_REFUNDED   IDENTIFY_FINISHED                  ignored
PARTIALLY_REFUNDED   SCAN_TIMED_OUT                     ignored
PARTIALLY_REFUNDED   IDENTIFY_TIMED_OUT                 ignored
PARTIALLY_REFUNDED   POS_UPDATE_TIMED_OUT               ignored
PARTIALLY_REFUNDED   PAYMENT_CREATED                    ignored
PARTIALLY_REFUNDED   PAYMENT_CREATE_REFUSED             ignored
PARTIALLY_REFUNDED   CANCEL_SUCCEEDED                   ignored
PARTIALLY_REFUNDED   CANCEL_REFUSED_ALREADY_AUTHORIZED  ignored
PARTIALLY_REFUNDED   CANCEL_FAILED                      ignored
PARTIALLY_REFUNDED   CAPTURE_SUCCEEDED                  ignored
PARTIALLY_REFUNDED   CAPTURE_FAILED                     ignored
PARTIALLY_REFUNDED   REFUND_SUCCEEDED                   REFUNDED
PARTIALLY_REFUNDED   REFUND_FAILED                      anomaly:PARTIALLY_REFUNDED
PARTIALLY_REFUNDED   VIPPS_AUTHORIZED                   ignored
PARTIALLY_REFUNDED   VIPPS_ABORTED                      ignored
PARTIALLY_REFUNDED   VIPPS_EXPIRED                      ignored
PARTIALLY_REFUNDED   VIPPS_TERMINATED                   ignored
REFUNDED             CANCEL_REQUESTED                   refused:checkout_final
REFUNDED             CAPTURE_REQUESTED                  refused:already_captured
REFUNDED             REFUND_REQUESTED                   refused:already_refunded
REFUNDED             POS_UPDATED                        refused:checkout_final
REFUNDED             CUSTOMER_SCANNED                   ignored
REFUNDED             IDENTIFY_FINISHED                  ignored
REFUNDED             SCAN_TIMED_OUT                     ignored
REFUNDED             IDENTIFY_TIMED_OUT                 ignored
REFUNDED             POS_UPDATE_TIMED_OUT               ignored
REFUNDED             PAYMENT_CREATED                    ignored
REFUNDED             PAYMENT_CREATE_REFUSED             ignored
REFUNDED             CANCEL_SUCCEEDED                   ignored
REFUNDED             CANCEL_REFUSED_ALREADY_AUTHORIZED  ignored
REFUNDED             CANCEL_FAILED                      ignored
REFUNDED             CAPTURE_SUCCEEDED                  ignored
REFUNDED             CAPTURE_FAILED                     ignored
REFUNDED             REFUND_SUCCEEDED                   ignored
REFUNDED             REFUND_FAILED                      anomaly:REFUNDED
REFUNDED             VIPPS_AUTHORIZED                   ignored
REFUNDED             VIPPS_ABORTED                      ignored
REFUNDED             VIPPS_EXPIRED                      ignored
REFUNDED             VIPPS_TERMINATED                   ignored
CANCELLED            CANCEL_REQUESTED                   refused:checkout_final
CANCELLED            CAPTURE_REQUESTED                  refused:not_authorized
CANCELLED            REFUND_REQUESTED                   refused:not_captured
CANCELLED            POS_UPDATED                        refused:checkout_final
CANCELLED            CUSTOMER_SCANNED                   ignored
CANCELLED            IDENTIFY_FINISHED                  ignored
CANCELLED            SCAN_TIMED_OUT                     ignored
CANCELLED            IDENTIFY_TIMED_OUT                 ignored
CANCELLED            POS_UPDATE_TIMED_OUT               ignored
CANCELLED            PAYMENT_CREATED                    ignored
CANCELLED            PAYMENT_CREATE_REFUSED             ignored
CANCELLED            CANCEL_SUCCEEDED                   ignored
CANCELLED            CANCEL_REFUSED_ALREADY_AUTHORIZED  ignored
CANCELLED            CANCEL_FAILED                      ignored
CANCELLED            CAPTURE_SUCCEEDED                  ignored
CANCELLED            CAPTURE_FAILED                     ignored
CANCELLED            REFUND_SUCCEEDED                   ignored
CANCELLED            REFUND_FAILED                      ignored
CANCELLED            VIPPS_AUTHORIZED                   anomaly:CANCELLED CANCEL
CANCELLED            VIPPS_ABORTED                      ignored
CANCELLED            VIPPS_EXPIRED                      ignored
CANCELLED            VIPPS_TERMINATED                   ignored
REJECTED             CANCEL_REQUESTED                   refused:checkout_final
REJECTED             CAPTURE_REQUESTED                  refused:not_authorized
REJECTED             REFUND_REQUESTED                   refused:not_captured
REJECTED             POS_UPDATED                        refused:checkout_final
REJECTED             CUSTOMER_SCANNED                   ignored
REJECTED             IDENTIFY_FINISHED                  ignored
REJECTED             SCAN_TIMED_OUT                     ignored
REJECTED             IDENTIFY_TIMED_OUT                 ignored
REJECTED             POS_UPDATE_TIMED_OUT               ignored
REJECTED             PAYMENT_CREATED                    ignored
REJECTED             PAYMENT_CREATE_REFUSED             ignored
REJECTED             CANCEL_SUCCEEDED                   ignored
REJECTED             CANCEL_REFUSED_ALREADY_AUTHORIZED  ignored
REJECTED             CANCEL_FAILED                      ignored
REJECTED             CAPTURE_SUCCEEDED                  ignored
REJECTED             CAPTURE_FAILED                     ignored
REJECTED             REFUND_SUCCEEDED                   ignored
REJECTED             REFUND_FAILED                      ignored
REJECTED             VIPPS_AUTHORIZED                   anomaly:REJECTED CANCEL
REJECTED             VIPPS_ABORTED                      ignored
REJECTED             VIPPS_EXPIRED                      ignored
REJECTED             VIPPS_TERMINATED                   ignored
EXPIRED              CANCEL_REQUESTED                   refused:checkout_final
EXPIRED              CAPTURE_REQUESTED                  refused:not_authorized
EXPIRED              REFUND_REQUESTED                   refused:not_captured
EXPIRED              POS_UPDATED                        refused:checkout_final
EXPIRED              CUSTOMER_SCANNED                   ignored
EXPIRED              IDENTIFY_FINISHED                  ignored
EXPIRED              SCAN_TIMED_OUT                     ignored
EXPIRED              IDENTIFY_TIMED_OUT                 ignored
EXPIRED              POS_UPDATE_TIMED_OUT               ignored
EXPIRED              PAYMENT_CREATED                    ignored
EXPIRED              PAYMENT_CREATE_REFUSED             ignored
EXPIRED              CANCEL_SUCCEEDED                   ignored
EXPIRED              CANCEL_REFUSED_ALREADY_AUTHORIZED  ignored
EXPIRED              CANCEL_FAILED                      ignored
EXPIRED              CAPTURE_SUCCEEDED                  ignored
EXPIRED              CAPTURE_FAILED                     ignored
EXPIRED              REFUND_SUCCEEDED                   ignored
EXPIRED              REFUND_FAILED                      ignored
EXPIRED              VIPPS_AUTHORIZED                   anomaly:EXPIRED CANCEL
EXPIRED              VIPPS_ABORTED                      ignored
EXPIRED              VIPPS_EXPIRED                      ignored
EXPIRED              VIPPS_TERMINATED                   ignored
FAILED               CANCEL_REQUESTED                   refused:checkout_final
FAILED               CAPTURE_REQUESTED                  refused:not_authorized
FAILED               REFUND_REQUESTED                   refused:not_captured
FAILED               POS_UPDATED                        refused:checkout_final
FAILED               CUSTOMER_SCANNED                   ignored
FAILED               IDENTIFY_FINISHED                  ignored
FAILED               SCAN_TIMED_OUT                     ignored
FAILED               IDENTIFY_TIMED_OUT                 ignored
FAILED               POS_UPDATE_TIMED_OUT               ignored
FAILED               PAYMENT_CREATED                    ignored
FAILED               PAYMENT_CREATE_REFUSED             ignored
FAILED               CANCEL_SUCCEEDED                   ignored
FAILED               CANCEL_REFUSED_ALREADY_AUTHORIZED  ignored
FAILED               CANCEL_FAILED                      ignored
FAILED               CAPTURE_SUCCEEDED                  ignored
FAILED               CAPTURE_FAILED                     ignored
FAILED               REFUND_SUCCEEDED                   ignored
FAILED               REFUND_FAILED                      ignored
FAILED               VIPPS_AUTHORIZED                   anomaly:FAILED CANCEL
FAILED               VIPPS_ABORTED                      ignored
FAILED               VIPPS_EXPIRED                      ignored
FAILED               VIPPS_TERMINATED                   ignored
"""


def _parse_table(text: str) -> dict[tuple[CheckoutState, EventKind], str]:
    table: dict[tuple[CheckoutState, EventKind], str] = {}
    for row in text.strip().splitlines():
        state, event, *outcome = row.split()
        key = (S(state), E(event))
        assert key not in table, f"{key} listed twice"
        table[key] = " ".join(outcome)
    return table


EXPECTED = _parse_table(EXPECTED_TABLE)


def _render_command(command: Command) -> str:
    text = command.kind.value
    if command.amount is not None:
        text += f"={command.amount}"
    if command.cancel_transaction_only:
        text += "~tx"
    return text


def _decide_or_refusal(facts: CheckoutFacts, event: Event) -> Decision | InvalidTransition:
    try:
        return decide(facts, event)
    except InvalidTransition as refused:
        return refused


def observe(facts: CheckoutFacts, event: Event) -> str:
    """What ``event`` does, played as the service plays it, in the table's notation.

    Anything but InvalidTransition propagates.
    """
    checkout = finish(Checkout.of(facts), event)
    outcome = _decide_or_refusal(checkout.facts, event)
    if isinstance(outcome, InvalidTransition):
        assert outcome.state is facts.state
        assert outcome.event is event.kind
        return f"refused:{outcome.code}"
    decision = outcome
    assert isinstance(decision, Decision)
    if decision.outcome is Outcome.IGNORED:
        assert decision.state is facts.state
        assert decision.commands == ()
        head = "ignored"
    elif decision.outcome is Outcome.ANOMALY:
        head = f"anomaly:{decision.state.value}"
    else:
        head = decision.state.value
    return " ".join([head, *(_render_command(c) for c in decision.commands)])


def test_table_lists_every_pair_exactly_once() -> None:
    assert set(EXPECTED) == {(state, kind) for state in S for kind in E}
    assert len(EXPECTED) == len(S) * len(E)


def test_representative_facts_are_in_their_state() -> None:
    assert set(REPRESENTATIVE_FACTS) == set(S)
    assert all(facts.state is state for state, facts in REPRESENTATIVE_FACTS.items())


@pytest.mark.parametrize(
    ("state", "kind"), sorted(EXPECTED), ids=[f"{s.value}-{k.value}" for s, k in sorted(EXPECTED)]
)
def test_every_pair_matches_the_table(state: CheckoutState, kind: EventKind) -> None:
    assert (
        observe(REPRESENTATIVE_FACTS[state], REPRESENTATIVE_EVENTS[kind]) == EXPECTED[(state, kind)]
    )


def test_only_till_requests_are_ever_refused_in_the_table() -> None:
    refused = {kind for (_, kind), outcome in EXPECTED.items() if outcome.startswith("refused:")}
    assert refused == TILL_REQUESTS


def test_transition_table_keys_are_real_pairs() -> None:
    assert all(isinstance(s, CheckoutState) and isinstance(k, EventKind) for s, k in TRANSITIONS)


# --------------------------------------------------------------------------------------------
# States and facts
# --------------------------------------------------------------------------------------------


def test_active_states_match_the_database_partial_index() -> None:
    assert {state.value for state in ACTIVE_STATES} == set(app.models.ACTIVE_CHECKOUT_STATES)
    assert len(app.models.ACTIVE_CHECKOUT_STATES) == len(set(app.models.ACTIVE_CHECKOUT_STATES))


def test_states_partition_into_active_paid_and_unpaid_final() -> None:
    assert set(S) == ACTIVE_STATES | PAID_STATES | UNPAID_FINAL_STATES
    assert not ACTIVE_STATES & PAID_STATES
    assert not ACTIVE_STATES & UNPAID_FINAL_STATES
    assert not PAID_STATES & UNPAID_FINAL_STATES


@pytest.mark.parametrize("state", list(S))
def test_is_active_and_is_final_are_complementary(state: CheckoutState) -> None:
    assert state.is_active is (state in ACTIVE_STATES)
    assert state.is_final is not state.is_active


def test_nothing_is_capturable_while_a_release_is_in_flight() -> None:
    facts = REPRESENTATIVE_FACTS[S.AUTHORIZED]
    assert facts.capturable == AMOUNT
    assert replace(facts, cancel_pending=True).capturable == 0


def test_capturable_and_refundable_are_never_negative() -> None:
    # Vipps reported more than we thought (a capture by another channel, a stale in-flight sum).
    facts = CheckoutFacts(
        S.CAPTURED, AMOUNT, authorized=AMOUNT, captured=AMOUNT, capture_pending=1, refunded=AMOUNT
    )
    overdrawn = replace(facts, refund_pending=1)
    assert (overdrawn.capturable, overdrawn.refundable) == (0, 0)


# --------------------------------------------------------------------------------------------
# Flows and policies
# --------------------------------------------------------------------------------------------


def test_scan_with_a_customer_club_exchanges_the_token_first() -> None:
    facts = CheckoutFacts(S.AWAITING_SCAN, AMOUNT, club_step=True)
    decision = decide(facts, Event(E.CUSTOMER_SCANNED))
    assert decision.state is S.IDENTIFYING
    assert decision.commands == (Command(C.EXCHANGE_TOKEN),)


def test_member_price_hold_waits_for_the_till_after_identification() -> None:
    facts = CheckoutFacts(S.IDENTIFYING, AMOUNT, club_step=True, member_price_hold=True)
    decision = decide(facts, Event(E.IDENTIFY_FINISHED))
    assert decision.state is S.AWAITING_POS_UPDATE
    assert decision.commands == ()


@pytest.mark.parametrize("hold", [False, True])
def test_identification_timeout_requests_the_payment_without_membership(hold: bool) -> None:
    # The customer token expires 15 minutes after the scan: the payment request cannot wait.
    facts = CheckoutFacts(S.IDENTIFYING, AMOUNT, club_step=True, member_price_hold=hold)
    decision = decide(facts, Event(E.IDENTIFY_TIMED_OUT))
    assert (decision.state, decision.outcome) == (S.PAYMENT_REQUESTED, Outcome.APPLIED)
    assert decision.commands == (Command(C.CREATE_PAYMENT),)
    assert decision.note == "identification took too long"


def test_identification_timeout_after_identification_is_ignored() -> None:
    facts = CheckoutFacts(S.IDENTIFYING, AMOUNT, club_step=True, member_price_hold=True)
    checkout, decisions = run(facts, Event(E.IDENTIFY_FINISHED), Event(E.IDENTIFY_TIMED_OUT))
    assert decisions[-1].outcome is Outcome.IGNORED
    assert checkout.facts.state is S.AWAITING_POS_UPDATE


def test_auto_capture_captures_the_full_authorized_amount_once() -> None:
    facts = CheckoutFacts(S.AWAITING_SCAN, AMOUNT, capture_mode=CapturePolicy.AUTO)
    checkout, decisions = run(
        facts,
        Event(E.CUSTOMER_SCANNED),
        Event(E.PAYMENT_CREATED),
        Event(E.VIPPS_AUTHORIZED, amount=AMOUNT),
        Event(E.VIPPS_AUTHORIZED, amount=AMOUNT),  # the poll agrees with the webhook
    )
    captures = [c for c in commands_of(decisions) if c.kind is C.CAPTURE]
    assert captures == [Command(C.CAPTURE, amount=AMOUNT)]
    assert checkout.facts.state is S.AUTHORIZED
    assert checkout.facts.capture_pending == AMOUNT
    assert checkout.facts.capturable == 0

    checkout, _ = run(checkout, Event(E.CAPTURE_SUCCEEDED, captured_total=AMOUNT))
    assert checkout.facts.state is S.CAPTURED
    assert (checkout.facts.captured, checkout.facts.capture_pending) == (AMOUNT, 0)


def test_auto_capture_uses_the_authorized_total_vipps_reports() -> None:
    facts = CheckoutFacts(S.PAYMENT_REQUESTED, AMOUNT)
    decision = decide(facts, Event(E.VIPPS_AUTHORIZED, amount=AMOUNT, authorized_total=9000))
    assert decision.commands == (Command(C.CAPTURE, amount=9000),)
    assert decision.authorized == 9000


def test_auto_capture_never_exceeds_the_sale_amount() -> None:
    facts = CheckoutFacts(S.PAYMENT_REQUESTED, AMOUNT)
    decision = decide(facts, Event(E.VIPPS_AUTHORIZED, amount=AMOUNT, authorized_total=12000))
    # The sale is captured and the surplus of the reservation released right after.
    assert decision.commands == (Command(C.CAPTURE, amount=AMOUNT), Command(C.CANCEL))
    assert decision.authorized == 12000  # the reservation is recorded as Vipps reports it


def test_a_smaller_authorized_report_never_lowers_the_reservation() -> None:
    facts = CheckoutFacts(S.CANCELLING, AMOUNT, authorized=AMOUNT, cancel_pending=True)
    decision = decide(facts, Event(E.VIPPS_AUTHORIZED, authorized_total=4000))
    assert decision.authorized == AMOUNT


def test_manual_capture_mode_captures_nothing_on_authorization() -> None:
    facts = CheckoutFacts(S.PAYMENT_REQUESTED, AMOUNT, capture_mode=CapturePolicy.MANUAL)
    decision = decide(facts, Event(E.VIPPS_AUTHORIZED, amount=AMOUNT))
    assert decision.state is S.AUTHORIZED
    assert decision.commands == ()
    assert decision.authorized == AMOUNT


def test_full_manual_capture_emits_only_the_capture() -> None:
    facts = REPRESENTATIVE_FACTS[S.AUTHORIZED]
    decision = decide(facts, Event(E.CAPTURE_REQUESTED, amount=AMOUNT))
    assert decision.commands == (Command(C.CAPTURE, amount=AMOUNT),)


def test_partial_manual_capture_captures_and_releases_the_remainder() -> None:
    checkout, decisions = run(
        REPRESENTATIVE_FACTS[S.AUTHORIZED], Event(E.CAPTURE_REQUESTED, amount=6000)
    )
    assert decisions[0].commands == (Command(C.CAPTURE, amount=6000), Command(C.CANCEL))
    assert (checkout.facts.capture_pending, checkout.facts.cancel_pending) == (6000, True)

    checkout, _ = run(checkout, Event(E.CAPTURE_SUCCEEDED, captured_total=6000))
    assert checkout.facts.state is S.AUTHORIZED  # the remainder is not released yet
    checkout, _ = run(checkout, Event(E.CANCEL_SUCCEEDED, cancelled_total=4000))
    assert checkout.facts.state is S.CAPTURED
    assert (checkout.facts.captured, checkout.facts.cancelled) == (6000, 4000)
    assert checkout.in_flight == ()


@pytest.mark.parametrize(
    ("amount", "code"),
    [(0, "invalid_amount"), (-1, "invalid_amount"), (AMOUNT + 1, "amount_exceeds_authorized")],
)
def test_capture_request_amount_is_bounded(amount: int, code: str) -> None:
    with pytest.raises(InvalidTransition) as refused:
        decide(REPRESENTATIVE_FACTS[S.AUTHORIZED], Event(E.CAPTURE_REQUESTED, amount=amount))
    assert refused.value.code == code


def test_capture_request_while_auto_capture_is_in_flight_is_refused() -> None:
    facts = replace(REPRESENTATIVE_FACTS[S.AUTHORIZED], capture_pending=AMOUNT)
    with pytest.raises(InvalidTransition) as refused:
        decide(facts, Event(E.CAPTURE_REQUESTED))
    assert refused.value.code == "invalid_amount"


@pytest.mark.parametrize(
    ("in_flight", "code"),
    [
        ({"capture_pending": AMOUNT}, "capture_in_progress"),
        ({"cancel_pending": True}, "release_in_progress"),
    ],
    ids=["capture", "release"],
)
def test_cancel_while_vipps_calls_are_in_flight_is_refused(
    in_flight: dict[str, Any], code: str
) -> None:
    facts = replace(REPRESENTATIVE_FACTS[S.AUTHORIZED], **in_flight)
    with pytest.raises(InvalidTransition) as refused:
        decide(facts, Event(E.CANCEL_REQUESTED))
    assert refused.value.code == code


def test_capture_failure_frees_the_amount_and_flags_it() -> None:
    checkout, decisions = run(
        REPRESENTATIVE_FACTS[S.AUTHORIZED],
        Event(E.CAPTURE_REQUESTED),
        Event(E.CAPTURE_FAILED, amount=AMOUNT, reason="6100"),
    )
    assert decisions[-1].outcome is Outcome.ANOMALY
    assert decisions[-1].note == "6100"
    assert (checkout.facts.state, checkout.facts.capture_pending) == (S.AUTHORIZED, 0)
    assert checkout.facts.capturable == AMOUNT


def test_a_release_that_arrives_while_a_capture_is_in_flight_is_bookkeeping_only() -> None:
    facts = replace(REPRESENTATIVE_FACTS[S.AUTHORIZED], capture_pending=6000)
    decision = decide(facts, Event(E.CANCEL_SUCCEEDED, cancelled_total=4000))
    assert (decision.state, decision.outcome) == (S.AUTHORIZED, Outcome.APPLIED)
    assert decision.cancelled == 4000
    assert decision.commands == ()


def test_a_polled_capture_waits_for_our_capture_call_to_finish() -> None:
    # The reconciler's poll shows the money captured before the outbox has the call's result.
    in_flight = replace(REPRESENTATIVE_FACTS[S.AUTHORIZED], capture_pending=AMOUNT)
    polled = Event(E.CAPTURE_SUCCEEDED, captured_total=AMOUNT)
    checkout, _ = run(in_flight, Redelivered(polled))
    assert (checkout.facts.state, checkout.facts.captured) == (S.AUTHORIZED, AMOUNT)
    checkout, _ = run(checkout, polled)  # the call's own result
    assert checkout.facts.state is S.CAPTURED
    assert checkout.in_flight == ()


@pytest.mark.parametrize(
    "event",
    [
        Event(E.CAPTURE_SUCCEEDED, captured_total=AMOUNT),
        Event(E.CAPTURE_SUCCEEDED),
        Event(E.REFUND_SUCCEEDED, refunded_total=4000),
        Event(E.REFUND_SUCCEEDED),
    ],
    ids=["capture-same-total", "capture-no-total", "refund-same-total", "refund-no-total"],
)
def test_a_success_that_changes_nothing_is_ignored(event: Event) -> None:
    decision = decide(REPRESENTATIVE_FACTS[S.PARTIALLY_REFUNDED], event)
    assert (decision.state, decision.outcome) == (S.PARTIALLY_REFUNDED, Outcome.IGNORED)


@pytest.mark.parametrize(
    ("amount", "code"),
    [(0, "invalid_amount"), (-5, "invalid_amount"), (6001, "amount_exceeds_captured")],
)
def test_refund_request_amount_is_bounded(amount: int, code: str) -> None:
    with pytest.raises(InvalidTransition) as refused:
        decide(REPRESENTATIVE_FACTS[S.PARTIALLY_REFUNDED], Event(E.REFUND_REQUESTED, amount=amount))
    assert refused.value.code == code


def test_partial_then_full_refund() -> None:
    checkout, decisions = run(
        REPRESENTATIVE_FACTS[S.CAPTURED],
        Event(E.REFUND_REQUESTED, amount=3000),
        Event(E.REFUND_SUCCEEDED, refunded_total=3000),
    )
    assert decisions[0].commands == (Command(C.REFUND, amount=3000),)
    facts = checkout.facts
    assert (facts.state, facts.refunded, facts.refund_pending) == (S.PARTIALLY_REFUNDED, 3000, 0)
    checkout, _ = run(
        checkout, Event(E.REFUND_REQUESTED), Event(E.REFUND_SUCCEEDED, refunded_total=AMOUNT)
    )
    facts = checkout.facts
    assert (facts.state, facts.refunded, facts.refund_pending) == (S.REFUNDED, AMOUNT, 0)


def test_a_refund_result_without_a_total_changes_nothing() -> None:
    facts = REPRESENTATIVE_FACTS[S.CAPTURED]
    decision = decide(facts, Event(E.REFUND_SUCCEEDED))
    assert (decision.state, decision.outcome, decision.refunded) == (S.CAPTURED, Outcome.IGNORED, 0)


def test_refunds_in_flight_count_against_the_refundable_amount() -> None:
    checkout, _ = run(REPRESENTATIVE_FACTS[S.CAPTURED], Event(E.REFUND_REQUESTED, amount=7000))
    with pytest.raises(InvalidTransition) as refused:
        decide(checkout.facts, Event(E.REFUND_REQUESTED, amount=3001))
    assert refused.value.code == "amount_exceeds_captured"


def test_a_failed_refund_frees_its_amount_for_another_refund() -> None:
    checkout, decisions = run(
        REPRESENTATIVE_FACTS[S.CAPTURED],
        Event(E.REFUND_REQUESTED, amount=7000),
        Event(E.REFUND_FAILED, amount=7000, reason="6150"),
        Event(E.REFUND_REQUESTED),
    )
    assert decisions[1].outcome is Outcome.ANOMALY
    assert decisions[-1].commands == (Command(C.REFUND, amount=AMOUNT),)
    assert checkout.facts.state is S.CAPTURED


def test_cancel_before_payment_request_is_local() -> None:
    for state in (S.AWAITING_SCAN, S.IDENTIFYING, S.AWAITING_POS_UPDATE):
        decision = decide(REPRESENTATIVE_FACTS[state], Event(E.CANCEL_REQUESTED))
        assert (decision.state, decision.commands) == (S.CANCELLED, ())


def test_cancel_while_payment_requested_never_releases_a_concurrent_approval() -> None:
    decision = decide(REPRESENTATIVE_FACTS[S.PAYMENT_REQUESTED], Event(E.CANCEL_REQUESTED))
    assert decision.commands == (Command(C.CANCEL, cancel_transaction_only=True),)


def _late_approval(policy: LateApprovalPolicy) -> tuple[Checkout, list[Decision]]:
    """Cancel from the till while the customer approves: the cancel is refused with 6060."""
    facts = CheckoutFacts(S.PAYMENT_REQUESTED, AMOUNT, late_approval=policy)
    return run(
        facts,
        Event(E.CANCEL_REQUESTED),
        Event(E.VIPPS_AUTHORIZED, amount=AMOUNT),
        Event(E.CANCEL_REFUSED_ALREADY_AUTHORIZED),
    )


def test_late_approval_release_cancels_the_reservation() -> None:
    checkout, decisions = _late_approval(LateApprovalPolicy.RELEASE)
    assert decisions[1].state is S.CANCELLING  # the approval waits for our cancel's result
    assert decisions[1].commands == ()
    assert checkout.facts.state is S.CANCELLING
    assert checkout.facts.authorized == AMOUNT
    assert decisions[-1].commands == (Command(C.CANCEL),)
    assert not any(c.kind is C.CAPTURE for c in commands_of(decisions))
    checkout, _ = run(checkout, Event(E.CANCEL_SUCCEEDED, cancelled_total=AMOUNT))
    assert (checkout.facts.state, checkout.facts.cancelled) == (S.CANCELLED, AMOUNT)
    assert checkout.in_flight == ()


def test_late_approval_keep_hands_the_reservation_to_the_till() -> None:
    checkout, decisions = _late_approval(LateApprovalPolicy.KEEP)
    facts = checkout.facts
    assert facts.state is S.AUTHORIZED
    assert facts.authorized == AMOUNT
    assert facts.capture_mode is CapturePolicy.MANUAL  # never auto-captured after a cancel
    assert decisions[-1].commands == ()
    assert not any(c.kind is C.CAPTURE for c in commands_of(decisions))
    decision = decide(facts, Event(E.CAPTURE_REQUESTED))
    assert decision.commands == (Command(C.CAPTURE, amount=AMOUNT),)


@pytest.mark.parametrize("policy", list(LateApprovalPolicy))
def test_late_approval_refusal_before_the_webhook(policy: LateApprovalPolicy) -> None:
    # Our cancel's 6060 arrives before Vipps's authorized webhook.
    facts = CheckoutFacts(S.PAYMENT_REQUESTED, AMOUNT, late_approval=policy)
    checkout, decisions = run(
        facts,
        Event(E.CANCEL_REQUESTED),
        Event(E.CANCEL_REFUSED_ALREADY_AUTHORIZED),
        Event(E.VIPPS_AUTHORIZED, amount=AMOUNT),
    )
    assert not any(c.kind is C.CAPTURE for c in commands_of(decisions))
    assert [c for c in commands_of(decisions) if not c.cancel_transaction_only] == (
        [Command(C.CANCEL)] if policy is LateApprovalPolicy.RELEASE else []
    )
    expected = S.CANCELLING if policy is LateApprovalPolicy.RELEASE else S.AUTHORIZED
    assert checkout.facts.state is expected
    assert checkout.facts.authorized == AMOUNT


@pytest.mark.parametrize("policy", list(LateApprovalPolicy))
def test_approval_while_cancelling_with_no_cancel_in_flight_applies_the_policy_at_once(
    policy: LateApprovalPolicy,
) -> None:
    # Our cancel-only-if-pending failed (e.g. 404 before Vipps knew the payment).
    facts = CheckoutFacts(S.CANCELLING, AMOUNT, late_approval=policy)
    decision = decide(facts, Event(E.VIPPS_AUTHORIZED, amount=AMOUNT))
    assert decision.authorized == AMOUNT
    if policy is LateApprovalPolicy.RELEASE:
        assert (decision.state, decision.commands) == (S.CANCELLING, (Command(C.CANCEL),))
    else:
        assert (decision.state, decision.commands) == (S.AUTHORIZED, ())
        assert decision.capture_mode is CapturePolicy.MANUAL


@pytest.mark.parametrize("state", sorted(UNPAID_FINAL_STATES))
def test_authorization_after_an_unpaid_end_is_released_once(state: CheckoutState) -> None:
    checkout, decisions = run(
        REPRESENTATIVE_FACTS[state],
        Event(E.VIPPS_AUTHORIZED, amount=AMOUNT),
        Event(E.VIPPS_AUTHORIZED, amount=AMOUNT),
        Event(E.CANCEL_SUCCEEDED, cancelled_total=AMOUNT),
        Event(E.VIPPS_AUTHORIZED, amount=AMOUNT),  # Vipps's state stays AUTHORIZED after a cancel
    )
    assert [d.outcome for d in decisions] == [
        Outcome.ANOMALY,
        Outcome.IGNORED,
        Outcome.IGNORED,
        Outcome.IGNORED,
    ]
    assert commands_of(decisions) == [Command(C.CANCEL)]
    assert (checkout.facts.state, checkout.facts.cancelled) == (state, AMOUNT)


def test_a_late_authorization_is_not_released_twice() -> None:
    # A release is already in flight (its result has not arrived): no second CANCEL.
    facts = replace(REPRESENTATIVE_FACTS[S.EXPIRED], cancel_pending=True)
    decision = decide(facts, Event(E.VIPPS_AUTHORIZED, amount=AMOUNT))
    assert (decision.outcome, decision.commands) == (Outcome.IGNORED, ())


def test_vipps_terminated_while_cancelling_records_the_cancelled_amount() -> None:
    decision = decide(
        REPRESENTATIVE_FACTS[S.CANCELLING], Event(E.VIPPS_TERMINATED, cancelled_total=AMOUNT)
    )
    assert (decision.state, decision.cancelled) == (S.CANCELLED, AMOUNT)


# --------------------------------------------------------------------------------------------
# Reordered and duplicate news (each of these was once a defect)
# --------------------------------------------------------------------------------------------


def test_reordered_older_totals_never_roll_bookkeeping_back() -> None:
    refunded = Checkout.of(REPRESENTATIVE_FACTS[S.REFUNDED])
    captured = Checkout.of(REPRESENTATIVE_FACTS[S.CAPTURED])
    cancelled = Checkout.of(replace(REPRESENTATIVE_FACTS[S.CANCELLED], cancelled=AMOUNT))
    assert run(refunded, Event(E.REFUND_SUCCEEDED, refunded_total=4000))[0] == refunded
    assert run(captured, Event(E.CAPTURE_SUCCEEDED, captured_total=6000))[0] == captured
    assert run(cancelled, Event(E.CANCEL_SUCCEEDED, cancelled_total=4000))[0] == cancelled


def test_duplicate_failure_results_are_idempotent() -> None:
    two_refunds = (Command(C.REFUND, amount=3000), Command(C.REFUND, amount=4000))
    refund_failed = Event(E.REFUND_FAILED, amount=3000)
    checkout, _ = run(
        with_in_flight(REPRESENTATIVE_FACTS[S.CAPTURED], two_refunds),
        refund_failed,
        Redelivered(refund_failed),
    )
    assert (checkout.facts.state, checkout.facts.refund_pending) == (S.CAPTURED, 4000)
    assert checkout.facts.refundable == 6000

    two_captures = (Command(C.CAPTURE, amount=4000), Command(C.CAPTURE, amount=6000))
    capture_failed = Event(E.CAPTURE_FAILED, amount=4000)
    checkout, _ = run(
        with_in_flight(REPRESENTATIVE_FACTS[S.AUTHORIZED], two_captures),
        capture_failed,
        Redelivered(capture_failed),
    )
    assert (checkout.facts.state, checkout.facts.capture_pending) == (S.AUTHORIZED, 6000)
    assert checkout.facts.capturable == 4000


def test_duplicate_cancel_refusal_emits_one_release() -> None:
    refusal = Event(E.CANCEL_REFUSED_ALREADY_AUTHORIZED)
    facts = CheckoutFacts(S.PAYMENT_REQUESTED, AMOUNT, late_approval=LateApprovalPolicy.RELEASE)
    checkout, decisions = run(facts, Event(E.CANCEL_REQUESTED), refusal, Redelivered(refusal))
    assert [c for c in commands_of(decisions) if not c.cancel_transaction_only] == [
        Command(C.CANCEL)
    ]
    assert decisions[-1].outcome is Outcome.IGNORED
    assert checkout.in_flight == (Command(C.CANCEL),)


def test_failed_cancel_then_approval_does_not_strand_the_checkout() -> None:
    facts = CheckoutFacts(S.PAYMENT_REQUESTED, AMOUNT)
    checkout, decisions = run(
        facts,
        Event(E.CANCEL_REQUESTED),
        Event(E.CANCEL_FAILED, reason="404 payment not found yet"),
        Event(E.VIPPS_AUTHORIZED, amount=AMOUNT),
    )
    assert checkout.facts.state is S.CANCELLING
    assert decisions[-1].commands == (Command(C.CANCEL),)  # the reservation is released
    checkout, _ = run(checkout, Event(E.CANCEL_SUCCEEDED, cancelled_total=AMOUNT))
    assert checkout.facts.state is S.CANCELLED


def test_no_second_capture_while_the_remainder_is_being_released() -> None:
    checkout, _ = run(REPRESENTATIVE_FACTS[S.AUTHORIZED], Event(E.CAPTURE_REQUESTED, amount=6000))
    with pytest.raises(InvalidTransition) as refused:
        decide(checkout.facts, Event(E.CAPTURE_REQUESTED, amount=4000))
    assert refused.value.code == "amount_exceeds_authorized"


def test_release_before_capture_result_does_not_end_unpaid() -> None:
    checkout, decisions = run(
        REPRESENTATIVE_FACTS[S.AUTHORIZED],
        Event(E.CAPTURE_REQUESTED, amount=6000),
        Event(E.CANCEL_SUCCEEDED, cancelled_total=4000),
        Event(E.CAPTURE_SUCCEEDED, captured_total=6000),
    )
    assert decisions[1].state is S.AUTHORIZED
    assert checkout.facts.state is S.CAPTURED
    assert (checkout.facts.captured, checkout.facts.cancelled) == (6000, 4000)


# --------------------------------------------------------------------------------------------
# Properties over random facts and events
# --------------------------------------------------------------------------------------------

# Where a cancel can be in flight: the till's cancel, a partial capture's release, a late release.
CANCEL_IN_FLIGHT_STATES = (
    frozenset({S.CANCELLING, S.AUTHORIZED}) | PAID_STATES | UNPAID_FINAL_STATES
)


@st.composite
def consistent_facts(draw: st.DrawFn, states: list[CheckoutState] | None = None) -> CheckoutFacts:
    state = draw(st.sampled_from(states or list(S)))
    amount = draw(st.integers(1, 65_000_000))
    authorized = draw(st.sampled_from([0, amount]) | st.integers(0, amount))
    captured = draw(st.integers(0, authorized))
    cancelled = draw(st.integers(0, authorized - captured))
    capture_pending = draw(st.integers(0, authorized - captured - cancelled))
    refunded = draw(st.integers(0, captured))
    refund_pending = draw(st.integers(0, captured - refunded))
    cancel_pending = state in CANCEL_IN_FLIGHT_STATES and draw(st.booleans())
    return CheckoutFacts(
        state=state,
        amount=amount,
        capture_mode=draw(st.sampled_from(list(CapturePolicy))),
        authorized=authorized,
        captured=captured,
        refunded=refunded,
        cancelled=cancelled,
        capture_pending=capture_pending,
        refund_pending=refund_pending,
        cancel_pending=cancel_pending,
        club_step=draw(st.booleans()),
        member_price_hold=draw(st.booleans()),
        late_approval=draw(st.sampled_from(list(LateApprovalPolicy))),
    )


_money = st.none() | st.integers(-10, 70_000_000)


def events(
    kinds: frozenset[EventKind] | None = None, money: st.SearchStrategy[int | None] = _money
) -> st.SearchStrategy[Event]:
    return st.builds(
        Event,
        kind=st.sampled_from(sorted(kinds or set(E))),
        amount=money,
        authorized_total=money,
        captured_total=money,
        refunded_total=money,
        cancelled_total=money,
        reason=st.none() | st.text(max_size=10),
    )


PROPERTY_SETTINGS = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def test_decide_returns_a_decision_or_refuses() -> None:
    """Total over every consistent set of facts, reachable or not: only a till request is ever
    refused, and ignoring something changes nothing."""
    reached = Reached()

    @PROPERTY_SETTINGS
    @given(consistent_facts(), events())
    def decide_is_total(facts: CheckoutFacts, event: Event) -> None:
        outcome = _decide_or_refusal(facts, event)
        if isinstance(outcome, InvalidTransition):
            reached("refused")
            assert event.kind in TILL_REQUESTS
            assert (outcome.state, outcome.event) == (facts.state, event.kind)
            assert outcome.code
            return
        reached("decided")
        assert isinstance(outcome.state, CheckoutState)
        if outcome.outcome is Outcome.IGNORED:
            reached("ignored")
            assert outcome.state is facts.state
            assert outcome.commands == ()

    decide_is_total()
    reached.at_least({"refused": 10, "decided": 200, "ignored": 150})


# --------------------------------------------------------------------------------------------
# Properties over reachable histories (tests/domain/histories.py): each step is something that
# can happen next to a real checkout, so captures, refunds and releases are actually decided.
# --------------------------------------------------------------------------------------------

# Derandomized: the same 300 histories on every run, so the counted minimums below are facts
# about the generator and the code, never luck (random runs varied threefold in the rarer
# labels). A change that makes a property reach its assertions less often fails the test.
HISTORY_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)


def decided(world: World) -> list[tuple[Step, Decision]]:
    return [(s, s.outcome) for s in world.steps if isinstance(s.outcome, Decision)]


def test_vipps_news_is_always_acknowledged() -> None:
    """Vipps retries whatever we do not acknowledge: only the till's requests may be refused."""
    reached = Reached()

    @HISTORY_SETTINGS
    @given(histories())
    def acknowledged(world: World) -> None:
        for step in world.steps:
            if step.source in ("news", "outbox", "customer", "timer"):
                reached(f"{step.source} applied")
                assert isinstance(step.outcome, Decision), step

    acknowledged()
    reached.at_least({"news applied": 500, "outbox applied": 300, "timer applied": 200})


def test_money_totals_never_shrink() -> None:
    reached = Reached()

    @HISTORY_SETTINGS
    @given(histories())
    def totals_grow(world: World) -> None:
        for step, decision in decided(world):
            for name in ("authorized", "captured", "refunded", "cancelled"):
                reported = getattr(decision, name)
                if reported is None:
                    continue
                reached(f"{name} reported")
                assert reported >= getattr(step.before, name), (name, step)
                assert getattr(step.after, name) == reported

    totals_grow()
    reached.at_least(
        {
            "authorized reported": 70,
            "captured reported": 50,
            "refunded reported": 10,
            "cancelled reported": 80,
        }
    )


def test_capture_only_from_an_authorization_and_never_above_capturable() -> None:
    """Every capture we decide is within what Vipps still holds for us when it is sent: Vipps
    never refuses one of our captures for its amount, and nothing is captured above the sale."""
    reached = Reached()

    @HISTORY_SETTINGS
    @given(histories())
    def captures_fit(world: World) -> None:
        for step in world.steps:
            facts = step.after
            if facts.cancelled and facts.authorized:
                # What may still be captured and what is captured, on its way or released
                # never add up to more than the reservation.
                reached("reservation partly released")
                held = facts.captured + facts.cancelled + facts.capture_pending
                assert facts.capturable + held <= max(facts.authorized, held), step
        for step, decision in decided(world):
            captures = [c for c in decision.commands if c.kind is C.CAPTURE]
            if not captures:
                continue
            reached(f"capture decided on {step.event.kind}")
            facts = step.before
            # Auto capture rides on the authorization itself; otherwise it is AUTHORIZED.
            assert decision.state is S.AUTHORIZED
            assert facts.state is S.AUTHORIZED or (
                facts.state is S.PAYMENT_REQUESTED and step.event.kind is E.VIPPS_AUTHORIZED
            )
            assert not facts.cancel_pending  # nothing is captured out of a release
            (capture,) = captures
            assert capture.amount is not None
            assert capture.amount > 0
            committed = facts.captured + facts.cancelled + facts.capture_pending
            assert committed + capture.amount <= min(step.after.authorized, facts.amount)
            if step.event.kind is E.CAPTURE_REQUESTED:
                assert capture.amount <= facts.capturable
            assert step.after.capture_pending == facts.capture_pending + capture.amount
        reordered = False  # once a call ran out of order, Vipps may rightly refuse later ones
        for step in world.steps:
            if step.source == "outbox":
                reordered = reordered or step.index != 0
            if step.performed is not None and step.performed.kind is C.CAPTURE:
                reached("capture sent")
                if not reordered:  # all sent in order: Vipps holds enough for each
                    assert step.refused in (None, "other"), step
        settle(world)
        assert world.vipps.captured <= world.vipps.amount

    captures_fit()
    reached.at_least(
        {
            "capture decided on CAPTURE_REQUESTED": 30,
            "capture decided on VIPPS_AUTHORIZED": 25,
            "capture sent": 60,
            "reservation partly released": 100,
        }
    )


def test_refund_never_above_refundable() -> None:
    reached = Reached()

    @HISTORY_SETTINGS
    @given(histories())
    def refunds_fit(world: World) -> None:
        for step, decision in decided(world):
            refunds = [c for c in decision.commands if c.kind is C.REFUND]
            if not refunds:
                continue
            reached("refund decided")
            assert step.before.state in (S.CAPTURED, S.PARTIALLY_REFUNDED)
            assert step.event.kind is E.REFUND_REQUESTED
            (refund,) = refunds
            assert refund.amount is not None
            assert 0 < refund.amount <= step.before.refundable
        reordered = False  # once a call ran out of order, Vipps may rightly refuse later ones
        for step in world.steps:
            if step.source == "outbox":
                reordered = reordered or step.index != 0
            if step.performed is not None and step.performed.kind is C.REFUND:
                reached("refund sent")
                if not reordered:  # all sent in order: Vipps holds enough for each
                    assert step.refused in (None, "other"), step
        settle(world)
        assert world.vipps.refunded <= world.vipps.captured

    refunds_fit()
    reached.at_least({"refund decided": 20, "refund sent": 20})


def test_no_second_cancel_while_one_is_in_flight() -> None:
    reached = Reached()

    @HISTORY_SETTINGS
    @given(histories())
    def one_cancel(world: World) -> None:
        for step in world.steps:
            assert sum(c.kind is C.CANCEL for c in step.in_flight) <= 1, step
            if not step.before.cancel_pending or step.decision is None:
                continue
            reached(f"decided with a cancel in flight in {step.before.state}")
            assert all(c.kind is not C.CANCEL for c in step.decision.commands), step

    one_cancel()
    reached.at_least(
        {
            "decided with a cancel in flight in CANCELLING": 20,
            "decided with a cancel in flight in AUTHORIZED": 10,
        }
    )


def test_a_final_state_never_becomes_active() -> None:
    """And money leaves a final checkout only to release a late authorization."""
    reached = Reached()

    @HISTORY_SETTINGS
    @given(histories())
    def final_stays_final(world: World) -> None:
        for step in world.steps:
            if not step.before.state.is_final or step.decision is None:
                continue
            reached(f"decided in final {'paid' if step.before.state in PAID_STATES else 'unpaid'}")
            decision = step.decision
            assert decision.state.is_final, step
            assert all(c.kind in (C.CANCEL, C.REFUND) for c in decision.commands)
            if any(c.kind is C.CANCEL for c in decision.commands):
                reached("late authorization released")
                assert step.event.kind is E.VIPPS_AUTHORIZED
                assert step.before.state in UNPAID_FINAL_STATES

    final_stays_final()
    reached.at_least(
        {
            "decided in final paid": 150,
            "decided in final unpaid": 100,
            "late authorization released": 3,
        }
    )


def test_paid_states_stay_paid() -> None:
    reached = Reached()

    @HISTORY_SETTINGS
    @given(histories())
    def paid_stays_paid(world: World) -> None:
        for step in world.steps:
            if step.before.state in PAID_STATES and step.decision is not None:
                reached(f"decided in {step.before.state}")
                assert step.decision.state in PAID_STATES, step

    paid_stays_paid()
    reached.at_least({"decided in CAPTURED": 200, "decided in PARTIALLY_REFUNDED": 10})


def test_a_duplicate_vipps_event_changes_nothing() -> None:
    """Webhooks are redelivered and polls repeat: news applied a second time, with no command
    finishing, changes nothing at all."""
    reached = Reached()

    @HISTORY_SETTINGS
    @given(histories())
    def duplicates_are_noops(world: World) -> None:
        for step in world.steps:
            if step.source not in ("news", "outbox") or step.decision is None:
                continue
            reached(f"{step.source} repeated")
            again = decide(step.after, step.event)
            assert again.commands == (), step
            assert again.state is step.after.state
            for name in ("authorized", "captured", "refunded", "cancelled"):
                value = getattr(again, name)
                assert value is None or value == getattr(step.after, name), (name, step)

    duplicates_are_noops()
    reached.at_least({"news repeated": 400, "outbox repeated": 250})


def test_a_settled_history_agrees_with_vipps() -> None:
    """Once every command and every piece of news has run its course, our books are Vipps's:
    the same captured and refunded totals, nothing captured above the sale, and no reservation
    left hanging at Vipps for a checkout that ended."""
    reached = Reached()

    @HISTORY_SETTINGS
    @given(histories())
    def books_agree(world: World) -> None:
        settle(world)
        facts, vipps = world.current(), world.vipps
        reached(f"settled {facts.state}")
        assert not world.queue
        assert (facts.captured, facts.refunded) == (vipps.captured, vipps.refunded)
        assert vipps.captured <= vipps.amount
        assert vipps.refunded <= vipps.captured
        release_refused = any(
            s.performed is not None and s.performed.kind is C.CANCEL and s.refused == "other"
            for s in world.steps
        )
        if facts.state.is_final and vipps.state == "AUTHORIZED" and not release_refused:
            # (A release Vipps refused leaves the rest to lapse at Vipps on its own.)
            reached("ended with an authorization")
            assert vipps.capturable == 0, (facts, vipps)
        if facts.state in UNPAID_FINAL_STATES:
            assert vipps.captured == 0
        if facts.state in PAID_STATES:
            assert vipps.captured > 0

    books_agree()
    reached.at_least(
        {
            "settled CAPTURED": 25,
            "settled CANCELLED": 25,
            "settled EXPIRED": 8,
            "ended with an authorization": 60,
        }
    )


# --------------------------------------------------------------------------------------------
# Regressions: a reservation above the sale, a refused release of the rest
# --------------------------------------------------------------------------------------------


def test_after_a_release_and_a_refused_capture_only_the_unreleased_rest_is_capturable() -> None:
    """A partial capture of 6000 whose release of the other 4000 went through while the capture
    itself was refused: 6000 is left to capture, not 6000 plus the released 4000."""
    checkout, _ = run(
        REPRESENTATIVE_FACTS[S.AUTHORIZED],
        Event(E.CAPTURE_REQUESTED, amount=6000),
        Event(E.CANCEL_SUCCEEDED, cancelled_total=4000),
        Event(E.CAPTURE_FAILED, amount=6000, reason="refused"),
    )
    facts = checkout.facts
    assert (facts.state, facts.captured, facts.cancelled, checkout.in_flight) == (
        S.AUTHORIZED,
        0,
        4000,
        (),
    )
    assert facts.capturable == 6000
    decision = decide(facts, Event(E.CAPTURE_REQUESTED))
    assert decision.commands == (Command(C.CAPTURE, amount=6000),)
    with pytest.raises(InvalidTransition) as refused:
        decide(facts, Event(E.CAPTURE_REQUESTED, amount=6001))
    assert refused.value.code == "amount_exceeds_authorized"


def test_a_reservation_above_the_sale_amount_is_never_captured_beyond_it() -> None:
    checkout, _ = run(
        CheckoutFacts(S.PAYMENT_REQUESTED, AMOUNT),
        Event(E.VIPPS_AUTHORIZED, amount=AMOUNT, authorized_total=12000),
        Event(E.CAPTURE_SUCCEEDED, captured_total=AMOUNT),
    )
    assert checkout.facts.capturable == 0
    assert checkout.facts.state is S.CAPTURED or checkout.facts.cancel_pending


def test_a_failed_remainder_release_does_not_strand_the_checkout() -> None:
    checkout, _ = run(
        REPRESENTATIVE_FACTS[S.AUTHORIZED],
        Event(E.CAPTURE_REQUESTED, amount=6000),
        Event(E.CAPTURE_SUCCEEDED, captured_total=6000),
        Event(E.CANCEL_FAILED, reason="400"),
    )
    stranded = checkout.facts.state is S.AUTHORIZED and not checkout.in_flight
    assert not stranded
