"""The checkout state machine over every (state, event) pair, plus its money invariants.

``EXPECTED`` is the contract written out by hand from DESIGN.md §2 and the transition table: one
line per pair, so any change to what ``decide()`` does for a pair fails
:func:`test_every_pair_matches_the_table` until the table here is updated on purpose.

The properties run over random *consistent* facts (``captured <= authorized`` and so on) and random
events, and use :func:`apply` to play a decision onto the facts the way the service persists it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
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

S = CheckoutState
E = EventKind
AMOUNT = 10000

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

_BOOKKEEPING = (
    "authorized",
    "captured",
    "refunded",
    "cancelled",
    "capture_pending",
    "refund_pending",
    "capture_mode",
)


def apply(facts: CheckoutFacts, decision: Decision) -> CheckoutFacts:
    """Facts after persisting ``decision``: its state, and every bookkeeping field it sets."""
    changes: dict[str, Any] = {
        name: getattr(decision, name)
        for name in _BOOKKEEPING
        if getattr(decision, name) is not None
    }
    return replace(facts, state=decision.state, **changes)


def run(facts: CheckoutFacts, *events: Event) -> tuple[CheckoutFacts, list[Decision]]:
    """Apply ``events`` in order; returns the final facts and every decision."""
    decisions: list[Decision] = []
    for event in events:
        decision = decide(facts, event)
        decisions.append(decision)
        facts = apply(facts, decision)
    return facts, decisions


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
    S.CANCELLING: CheckoutFacts(S.CANCELLING, AMOUNT),
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
CAPTURED             POS_UPDATE_TIMED_OUT               ignored
CAPTURED             PAYMENT_CREATED                    ignored
CAPTURED             PAYMENT_CREATE_REFUSED             ignored
CAPTURED             CANCEL_SUCCEEDED                   ignored
CAPTURED             CANCEL_REFUSED_ALREADY_AUTHORIZED  ignored
CAPTURED             CANCEL_FAILED                      ignored
CAPTURED             CAPTURE_SUCCEEDED                  CAPTURED
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
PARTIALLY_REFUNDED   POS_UPDATE_TIMED_OUT               ignored
PARTIALLY_REFUNDED   PAYMENT_CREATED                    ignored
PARTIALLY_REFUNDED   PAYMENT_CREATE_REFUSED             ignored
PARTIALLY_REFUNDED   CANCEL_SUCCEEDED                   ignored
PARTIALLY_REFUNDED   CANCEL_REFUSED_ALREADY_AUTHORIZED  ignored
PARTIALLY_REFUNDED   CANCEL_FAILED                      ignored
PARTIALLY_REFUNDED   CAPTURE_SUCCEEDED                  PARTIALLY_REFUNDED
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
REFUNDED             POS_UPDATE_TIMED_OUT               ignored
REFUNDED             PAYMENT_CREATED                    ignored
REFUNDED             PAYMENT_CREATE_REFUSED             ignored
REFUNDED             CANCEL_SUCCEEDED                   ignored
REFUNDED             CANCEL_REFUSED_ALREADY_AUTHORIZED  ignored
REFUNDED             CANCEL_FAILED                      ignored
REFUNDED             CAPTURE_SUCCEEDED                  REFUNDED
REFUNDED             CAPTURE_FAILED                     ignored
REFUNDED             REFUND_SUCCEEDED                   REFUNDED
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
    """What ``decide`` does, in the table's notation. Anything but InvalidTransition propagates."""
    outcome = _decide_or_refusal(facts, event)
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
# States
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


# --------------------------------------------------------------------------------------------
# Flows and policies
# --------------------------------------------------------------------------------------------


def test_scan_with_a_customer_club_exchanges_the_token_first() -> None:
    facts = CheckoutFacts(S.AWAITING_SCAN, AMOUNT, club_step=True)
    decision = decide(facts, Event(E.CUSTOMER_SCANNED))
    assert decision.state is S.IDENTIFYING
    assert decision.commands == (Command(CommandKind.EXCHANGE_TOKEN),)


def test_member_price_hold_waits_for_the_till_after_identification() -> None:
    facts = CheckoutFacts(S.IDENTIFYING, AMOUNT, club_step=True, member_price_hold=True)
    decision = decide(facts, Event(E.IDENTIFY_FINISHED))
    assert decision.state is S.AWAITING_POS_UPDATE
    assert decision.commands == ()


def test_auto_capture_captures_the_full_authorized_amount_once() -> None:
    facts = CheckoutFacts(S.AWAITING_SCAN, AMOUNT, capture_mode=CapturePolicy.AUTO)
    facts, decisions = run(
        facts,
        Event(E.CUSTOMER_SCANNED),
        Event(E.PAYMENT_CREATED),
        Event(E.VIPPS_AUTHORIZED, amount=AMOUNT),
        Event(E.VIPPS_AUTHORIZED, amount=AMOUNT),  # the poll agrees with the webhook
    )
    captures = [c for c in commands_of(decisions) if c.kind is CommandKind.CAPTURE]
    assert captures == [Command(CommandKind.CAPTURE, amount=AMOUNT)]
    assert facts.state is S.AUTHORIZED
    assert facts.capture_pending == AMOUNT
    assert facts.capturable == 0

    facts, _ = run(facts, Event(E.CAPTURE_SUCCEEDED, captured_total=AMOUNT))
    assert facts.state is S.CAPTURED
    assert (facts.captured, facts.capture_pending) == (AMOUNT, 0)


def test_auto_capture_uses_the_authorized_total_vipps_reports() -> None:
    facts = CheckoutFacts(S.PAYMENT_REQUESTED, AMOUNT)
    decision = decide(facts, Event(E.VIPPS_AUTHORIZED, amount=AMOUNT, authorized_total=9000))
    assert decision.commands == (Command(CommandKind.CAPTURE, amount=9000),)
    assert decision.authorized == 9000


def test_manual_capture_mode_captures_nothing_on_authorization() -> None:
    facts = CheckoutFacts(S.PAYMENT_REQUESTED, AMOUNT, capture_mode=CapturePolicy.MANUAL)
    decision = decide(facts, Event(E.VIPPS_AUTHORIZED, amount=AMOUNT))
    assert decision.state is S.AUTHORIZED
    assert decision.commands == ()
    assert decision.authorized == AMOUNT


def test_full_manual_capture_emits_only_the_capture() -> None:
    facts = REPRESENTATIVE_FACTS[S.AUTHORIZED]
    decision = decide(facts, Event(E.CAPTURE_REQUESTED, amount=AMOUNT))
    assert decision.commands == (Command(CommandKind.CAPTURE, amount=AMOUNT),)


def test_partial_manual_capture_captures_and_releases_the_remainder() -> None:
    facts = REPRESENTATIVE_FACTS[S.AUTHORIZED]
    facts, decisions = run(facts, Event(E.CAPTURE_REQUESTED, amount=6000))
    assert decisions[0].commands == (
        Command(CommandKind.CAPTURE, amount=6000),
        Command(CommandKind.CANCEL),
    )
    assert facts.capture_pending == 6000

    facts, _ = run(facts, Event(E.CAPTURE_SUCCEEDED, captured_total=6000))
    assert facts.state is S.AUTHORIZED  # the remainder is not released yet
    facts, _ = run(facts, Event(E.CANCEL_SUCCEEDED, cancelled_total=4000))
    assert facts.state is S.CAPTURED
    assert (facts.captured, facts.cancelled, facts.capture_pending) == (6000, 4000, 0)


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


def test_cancel_after_a_capture_started_is_refused() -> None:
    facts = replace(REPRESENTATIVE_FACTS[S.AUTHORIZED], capture_pending=AMOUNT)
    with pytest.raises(InvalidTransition) as refused:
        decide(facts, Event(E.CANCEL_REQUESTED))
    assert refused.value.code == "capture_in_progress"


def test_capture_failure_frees_the_pending_amount_and_flags_it() -> None:
    facts = replace(REPRESENTATIVE_FACTS[S.AUTHORIZED], capture_pending=AMOUNT)
    decision = decide(facts, Event(E.CAPTURE_FAILED, amount=AMOUNT, reason="6100"))
    assert decision.outcome is Outcome.ANOMALY
    assert decision.capture_pending == 0
    assert decision.note == "6100"


@pytest.mark.parametrize(
    ("amount", "code"),
    [(0, "invalid_amount"), (-5, "invalid_amount"), (6001, "amount_exceeds_captured")],
)
def test_refund_request_amount_is_bounded(amount: int, code: str) -> None:
    with pytest.raises(InvalidTransition) as refused:
        decide(REPRESENTATIVE_FACTS[S.PARTIALLY_REFUNDED], Event(E.REFUND_REQUESTED, amount=amount))
    assert refused.value.code == code


def test_partial_then_full_refund() -> None:
    facts = REPRESENTATIVE_FACTS[S.CAPTURED]
    facts, decisions = run(
        facts,
        Event(E.REFUND_REQUESTED, amount=3000),
        Event(E.REFUND_SUCCEEDED, refunded_total=3000),
    )
    assert decisions[0].commands == (Command(CommandKind.REFUND, amount=3000),)
    assert (facts.state, facts.refunded, facts.refund_pending) == (S.PARTIALLY_REFUNDED, 3000, 0)
    facts, _ = run(
        facts, Event(E.REFUND_REQUESTED), Event(E.REFUND_SUCCEEDED, refunded_total=AMOUNT)
    )
    assert (facts.state, facts.refunded, facts.refund_pending) == (S.REFUNDED, AMOUNT, 0)


def test_refunds_in_flight_count_against_the_refundable_amount() -> None:
    facts, _ = run(REPRESENTATIVE_FACTS[S.CAPTURED], Event(E.REFUND_REQUESTED, amount=7000))
    with pytest.raises(InvalidTransition) as refused:
        decide(facts, Event(E.REFUND_REQUESTED, amount=3001))
    assert refused.value.code == "amount_exceeds_captured"


def test_cancel_before_payment_request_is_local() -> None:
    for state in (S.AWAITING_SCAN, S.IDENTIFYING, S.AWAITING_POS_UPDATE):
        decision = decide(REPRESENTATIVE_FACTS[state], Event(E.CANCEL_REQUESTED))
        assert (decision.state, decision.commands) == (S.CANCELLED, ())


def test_cancel_while_payment_requested_never_releases_a_concurrent_approval() -> None:
    decision = decide(REPRESENTATIVE_FACTS[S.PAYMENT_REQUESTED], Event(E.CANCEL_REQUESTED))
    assert decision.commands == (Command(CommandKind.CANCEL, cancel_transaction_only=True),)


def _late_approval(policy: LateApprovalPolicy) -> tuple[CheckoutFacts, list[Decision]]:
    """Cancel from the till while the customer approves: the cancel is refused with 6060."""
    facts = CheckoutFacts(S.PAYMENT_REQUESTED, AMOUNT, late_approval=policy)
    return run(
        facts,
        Event(E.CANCEL_REQUESTED),
        Event(E.VIPPS_AUTHORIZED, amount=AMOUNT),
        Event(E.CANCEL_REFUSED_ALREADY_AUTHORIZED),
    )


def test_late_approval_release_cancels_the_reservation() -> None:
    facts, decisions = _late_approval(LateApprovalPolicy.RELEASE)
    assert facts.state is S.CANCELLING
    assert facts.authorized == AMOUNT
    assert decisions[-1].commands == (Command(CommandKind.CANCEL),)
    assert not any(c.kind is CommandKind.CAPTURE for c in commands_of(decisions))
    facts, _ = run(facts, Event(E.CANCEL_SUCCEEDED, cancelled_total=AMOUNT))
    assert (facts.state, facts.cancelled) == (S.CANCELLED, AMOUNT)


def test_late_approval_keep_hands_the_reservation_to_the_till() -> None:
    facts, decisions = _late_approval(LateApprovalPolicy.KEEP)
    assert facts.state is S.AUTHORIZED
    assert facts.authorized == AMOUNT
    assert facts.capture_mode is CapturePolicy.MANUAL  # never auto-captured after a cancel
    assert decisions[-1].commands == ()
    assert not any(c.kind is CommandKind.CAPTURE for c in commands_of(decisions))
    decision = decide(facts, Event(E.CAPTURE_REQUESTED))
    assert decision.commands == (Command(CommandKind.CAPTURE, amount=AMOUNT),)


@pytest.mark.parametrize("policy", list(LateApprovalPolicy))
def test_late_approval_refusal_before_the_webhook(policy: LateApprovalPolicy) -> None:
    # Our cancel's 6060 arrives before Vipps's authorized webhook.
    facts = CheckoutFacts(S.PAYMENT_REQUESTED, AMOUNT, late_approval=policy)
    facts, decisions = run(
        facts,
        Event(E.CANCEL_REQUESTED),
        Event(E.CANCEL_REFUSED_ALREADY_AUTHORIZED),
        Event(E.VIPPS_AUTHORIZED, amount=AMOUNT),
    )
    assert not any(c.kind is CommandKind.CAPTURE for c in commands_of(decisions))
    expected = S.CANCELLING if policy is LateApprovalPolicy.RELEASE else S.AUTHORIZED
    assert facts.state is expected
    assert facts.authorized == AMOUNT


@pytest.mark.parametrize("state", sorted(UNPAID_FINAL_STATES))
def test_authorization_after_an_unpaid_end_is_released_once(state: CheckoutState) -> None:
    facts, decisions = run(
        REPRESENTATIVE_FACTS[state],
        Event(E.VIPPS_AUTHORIZED, amount=AMOUNT),
        Event(E.VIPPS_AUTHORIZED, amount=AMOUNT),
    )
    assert [d.outcome for d in decisions] == [Outcome.ANOMALY, Outcome.IGNORED]
    assert commands_of(decisions) == [Command(CommandKind.CANCEL)]
    assert facts.state is state


def test_vipps_terminated_while_cancelling_records_the_cancelled_amount() -> None:
    decision = decide(
        REPRESENTATIVE_FACTS[S.CANCELLING], Event(E.VIPPS_TERMINATED, cancelled_total=AMOUNT)
    )
    assert (decision.state, decision.cancelled) == (S.CANCELLED, AMOUNT)


# --------------------------------------------------------------------------------------------
# Properties over random facts and events
# --------------------------------------------------------------------------------------------


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
        club_step=draw(st.booleans()),
        member_price_hold=draw(st.booleans()),
        late_approval=draw(st.sampled_from(list(LateApprovalPolicy))),
    )


_money = st.none() | st.integers(-10, 70_000_000)


def events(kinds: frozenset[EventKind] | None = None) -> st.SearchStrategy[Event]:
    return st.builds(
        Event,
        kind=st.sampled_from(sorted(kinds or set(E))),
        amount=_money,
        authorized_total=_money,
        captured_total=_money,
        refunded_total=_money,
        cancelled_total=_money,
        reason=st.none() | st.text(max_size=10),
    )


PROPERTY_SETTINGS = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(consistent_facts(), events())
def test_decide_returns_a_decision_or_refuses(facts: CheckoutFacts, event: Event) -> None:
    outcome = _decide_or_refusal(facts, event)
    if isinstance(outcome, InvalidTransition):
        assert event.kind in TILL_REQUESTS
        assert (outcome.state, outcome.event) == (facts.state, event.kind)
        assert outcome.code
        return
    decision = outcome
    assert isinstance(decision, Decision)
    assert isinstance(decision.state, CheckoutState)
    if decision.outcome is Outcome.IGNORED:
        assert decision.state is facts.state
        assert decision.commands == ()


@PROPERTY_SETTINGS
@given(consistent_facts(), events(VIPPS_EVENTS))
def test_vipps_news_is_always_acknowledged(facts: CheckoutFacts, event: Event) -> None:
    assert isinstance(decide(facts, event), Decision)


@PROPERTY_SETTINGS
@given(consistent_facts(), events())
def test_capture_only_from_an_authorization_and_never_above_capturable(
    facts: CheckoutFacts, event: Event
) -> None:
    try:
        decision = decide(facts, event)
    except InvalidTransition:
        return
    captures = [c for c in decision.commands if c.kind is CommandKind.CAPTURE]
    if not captures:
        return
    # Auto capture rides on the authorization itself; otherwise the checkout is AUTHORIZED.
    assert decision.state is S.AUTHORIZED
    assert facts.state is S.AUTHORIZED or (
        facts.state is S.PAYMENT_REQUESTED and event.kind is E.VIPPS_AUTHORIZED
    )
    assert len(captures) == 1
    amount = captures[0].amount
    assert amount is not None
    assert amount > 0
    after = apply(facts, decision)
    capturable = after.authorized - facts.captured - facts.cancelled - facts.capture_pending
    assert amount <= capturable
    assert after.capture_pending == facts.capture_pending + amount


@PROPERTY_SETTINGS
@given(consistent_facts(), events())
def test_refund_never_above_refundable(facts: CheckoutFacts, event: Event) -> None:
    try:
        decision = decide(facts, event)
    except InvalidTransition:
        return
    refunds = [c for c in decision.commands if c.kind is CommandKind.REFUND]
    if not refunds:
        return
    assert facts.state in (S.CAPTURED, S.PARTIALLY_REFUNDED)
    assert event.kind is E.REFUND_REQUESTED
    (refund,) = refunds
    assert refund.amount is not None
    assert 0 < refund.amount <= facts.refundable


@PROPERTY_SETTINGS
@given(consistent_facts([s for s in S if s.is_final]), events())
def test_a_final_state_never_becomes_active(facts: CheckoutFacts, event: Event) -> None:
    try:
        decision = decide(facts, event)
    except InvalidTransition:
        return
    assert decision.state.is_final
    # Money leaves a final checkout only to release a late authorization.
    assert all(c.kind in (CommandKind.CANCEL, CommandKind.REFUND) for c in decision.commands)
    if any(c.kind is CommandKind.CANCEL for c in decision.commands):
        assert event.kind is E.VIPPS_AUTHORIZED
        assert facts.state in UNPAID_FINAL_STATES


@PROPERTY_SETTINGS
@given(consistent_facts(sorted(PAID_STATES)), events())
def test_paid_states_stay_paid(facts: CheckoutFacts, event: Event) -> None:
    try:
        decision = decide(facts, event)
    except InvalidTransition:
        return
    assert decision.state in PAID_STATES


def _known_non_idempotent(facts: CheckoutFacts, event: Event) -> bool:
    """Duplicates pinned by the xfail tests below, left out of the general property."""
    if event.kind is E.CANCEL_REFUSED_ALREADY_AUTHORIZED:
        return facts.state is S.CANCELLING and facts.late_approval is LateApprovalPolicy.RELEASE
    if event.kind is E.CAPTURE_FAILED:
        return bool(event.amount) and facts.state is S.AUTHORIZED
    if event.kind is E.REFUND_FAILED:
        return bool(event.amount) and facts.state in PAID_STATES
    return False


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(consistent_facts(), events(VIPPS_EVENTS))
def test_a_duplicate_vipps_event_changes_nothing(facts: CheckoutFacts, event: Event) -> None:
    assume(not _known_non_idempotent(facts, event))
    first = decide(facts, event)
    after_first = apply(facts, first)
    second = decide(after_first, event)
    assert second.commands == ()
    assert second.state is after_first.state
    assert apply(after_first, second) == after_first


# --------------------------------------------------------------------------------------------
# Known defects in app/domain/state_machine.py (strict xfail: they turn red once fixed)
# --------------------------------------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="Absolute totals from Vipps are applied without max(): a reordered, older "
    "REFUND_SUCCEEDED/CAPTURE_SUCCEEDED/CANCEL_SUCCEEDED lowers refunded/captured/cancelled "
    "and moves REFUNDED back to PARTIALLY_REFUNDED.",
)
def test_reordered_older_totals_never_roll_bookkeeping_back() -> None:
    refunded = REPRESENTATIVE_FACTS[S.REFUNDED]
    stale_refund = decide(refunded, Event(E.REFUND_SUCCEEDED, refunded_total=4000))
    captured = REPRESENTATIVE_FACTS[S.CAPTURED]
    stale_capture = decide(captured, Event(E.CAPTURE_SUCCEEDED, captured_total=6000))
    assert apply(refunded, stale_refund) == refunded
    assert apply(captured, stale_capture) == captured


@pytest.mark.xfail(
    strict=True,
    reason="CAPTURE_FAILED/REFUND_FAILED subtract event.amount from the pending total each "
    "time, so a duplicate result frees money still in flight for another call.",
)
def test_duplicate_failure_results_are_idempotent() -> None:
    captured = replace(REPRESENTATIVE_FACTS[S.CAPTURED], refund_pending=7000)
    facts, _ = run(captured, *[Event(E.REFUND_FAILED, amount=3000)] * 2)
    assert facts.refund_pending == 4000
    authorized = replace(REPRESENTATIVE_FACTS[S.AUTHORIZED], capture_pending=AMOUNT)
    facts, _ = run(authorized, *[Event(E.CAPTURE_FAILED, amount=4000)] * 2)
    assert facts.capture_pending == 6000


@pytest.mark.xfail(
    strict=True,
    reason="With LateApprovalPolicy.RELEASE every CANCEL_REFUSED_ALREADY_AUTHORIZED in "
    "CANCELLING emits another full CANCEL; the facts cannot tell a duplicate from the first.",
)
def test_duplicate_cancel_refusal_emits_one_release() -> None:
    facts = CheckoutFacts(S.CANCELLING, AMOUNT, late_approval=LateApprovalPolicy.RELEASE)
    _, decisions = run(facts, *[Event(E.CANCEL_REFUSED_ALREADY_AUTHORIZED)] * 2)
    assert commands_of(decisions) == [Command(CommandKind.CANCEL)]


@pytest.mark.xfail(
    strict=True,
    reason="CANCEL_FAILED in CANCELLING is ignored; a later VIPPS_AUTHORIZED then keeps the "
    "checkout CANCELLING (till blocked) with a reservation nothing will release or capture.",
)
def test_failed_cancel_then_approval_does_not_strand_the_checkout() -> None:
    facts = CheckoutFacts(S.PAYMENT_REQUESTED, AMOUNT)
    facts, decisions = run(
        facts,
        Event(E.CANCEL_REQUESTED),
        Event(E.CANCEL_FAILED, reason="404 payment not found yet"),
        Event(E.VIPPS_AUTHORIZED, amount=AMOUNT),
    )
    stranded = facts.state is S.CANCELLING and facts.authorized and not decisions[-1].commands
    assert not stranded


@pytest.mark.xfail(
    strict=True,
    reason="A partial capture's remainder-release CANCEL is not tracked in the facts, so a "
    "second CAPTURE_REQUESTED is accepted for money that CANCEL is releasing.",
)
def test_no_second_capture_while_the_remainder_is_being_released() -> None:
    facts, _ = run(REPRESENTATIVE_FACTS[S.AUTHORIZED], Event(E.CAPTURE_REQUESTED, amount=6000))
    with pytest.raises(InvalidTransition):
        decide(facts, Event(E.CAPTURE_REQUESTED, amount=4000))


@pytest.mark.xfail(
    strict=True,
    reason="CANCEL_SUCCEEDED in AUTHORIZED looks only at captured, not capture_pending: a "
    "release processed before its capture's result ends CANCELLED, and the later "
    "CAPTURE_SUCCEEDED is ignored there, so captured money is booked as a cancelled sale.",
)
def test_release_before_capture_result_does_not_end_unpaid() -> None:
    facts, _ = run(REPRESENTATIVE_FACTS[S.AUTHORIZED], Event(E.CAPTURE_REQUESTED, amount=6000))
    facts, _ = run(
        facts,
        Event(E.CANCEL_SUCCEEDED, cancelled_total=4000),
        Event(E.CAPTURE_SUCCEEDED, captured_total=6000),
    )
    assert facts.state is S.CAPTURED
    assert facts.captured == 6000
