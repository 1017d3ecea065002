"""Reachable histories of one checkout: the service, its outbox and Vipps, played together.

A history starts where every checkout starts (``AWAITING_SCAN``), and each step is something
that can really happen next:

* the till asks for something (cancel, capture, refund, a member price) — refused or not;
* a timer fires (the reconciler's scan, identification and member-price deadlines);
* the customer scans, and at Vipps approves, declines or lets the payment expire;
* the outbox performs the checkout's *oldest* unfinished command (commands of one checkout run
  in order) against :class:`Vipps`, a model of the rules the simulator enforces
  (``app/simulator/engine.py``), and the result is decided with that command finished;
* news from Vipps arrives: a webhook or a poll's answer, possibly late, out of order or again.

Every step is recorded with the facts before and after, so the properties in
``test_state_machine.py`` check what the state machine decides in states it can actually reach
(random facts rarely reach a capture: 0 of 1,600 examples did). :func:`settle` then lets every
command and every piece of news run its course, so a history can be compared with Vipps's books.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from hypothesis import strategies as st

from app.domain.state_machine import (
    PAID_STATES,
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
    decide,
)

S = CheckoutState
E = EventKind
C = CommandKind
AMOUNT = 10000

# Commands whose being in flight is a fact decide() sees (the service derives them the same way).
TRACKED = frozenset({C.CAPTURE, C.REFUND, C.CANCEL})

Source = Literal["till", "timer", "customer", "outbox", "news"]
# How a create-payment call ends.
Create = Literal["created", "refused", "created, refusal seen"]


@dataclass(frozen=True, slots=True)
class Vipps:
    """One payment as Vipps keeps it; ``state`` is ``None`` before it is created.

    Vipps's state stays ``AUTHORIZED`` after captures, refunds and a release: money movements
    show only in the totals (REFERENCE.md §7.4).
    """

    state: str | None = None
    amount: int = 0
    authorized: int = 0
    captured: int = 0
    cancelled: int = 0
    refunded: int = 0

    @property
    def capturable(self) -> int:
        return self.authorized - self.captured - self.cancelled

    def totals(self, kind: EventKind, **extra: int | None) -> Event:
        """An event carrying Vipps's absolute totals, as the outbox and the reconciler send."""
        return Event(
            kind,
            authorized_total=self.authorized,
            captured_total=self.captured,
            refunded_total=self.refunded,
            cancelled_total=self.cancelled,
            **extra,  # type: ignore[arg-type]
        )

    def polled(self) -> Event | None:
        """What a GET of the payment tells the service (``app/service/sync.event_from_details``)."""
        match self.state:
            case "AUTHORIZED":
                return self.totals(E.VIPPS_AUTHORIZED, amount=self.amount)
            case "ABORTED":
                return Event(E.VIPPS_ABORTED)
            case "EXPIRED":
                return Event(E.VIPPS_EXPIRED)
            case "TERMINATED":
                return Event(E.VIPPS_TERMINATED, cancelled_total=self.cancelled)
            case _:
                return None


@dataclass(frozen=True, slots=True)
class Step:
    """One thing that happened, and what the state machine made of it."""

    source: Source
    event: Event
    before: CheckoutFacts
    outcome: Decision | InvalidTransition
    after: CheckoutFacts
    vipps: Vipps  # after the step
    # For an outbox step: the command performed, and Vipps's refusal code if it refused it.
    performed: Command | None = None
    refused: str | None = None
    in_flight: tuple[Command, ...] = ()  # the unfinished Vipps calls after the step
    index: int = 0  # which unfinished command the outbox performed (0: the oldest)

    @property
    def decision(self) -> Decision | None:
        return self.outcome if isinstance(self.outcome, Decision) else None


@dataclass
class World:
    """The checkout as the service holds it (facts plus its ordered outbox), and Vipps."""

    facts: CheckoutFacts
    queue: list[Command] = field(default_factory=list)
    vipps: Vipps = field(default_factory=Vipps)
    news: list[Event] = field(default_factory=list)  # every webhook Vipps has sent so far
    steps: list[Step] = field(default_factory=list)

    # ---- the service --------------------------------------------------------------------------

    def current(self) -> CheckoutFacts:
        """Facts with the in-flight amounts the unfinished commands add up to."""
        tracked = [c for c in self.queue if c.kind in TRACKED]
        return replace(
            self.facts,
            capture_pending=sum(c.amount or 0 for c in tracked if c.kind is C.CAPTURE),
            refund_pending=sum(c.amount or 0 for c in tracked if c.kind is C.REFUND),
            cancel_pending=any(c.kind is C.CANCEL for c in tracked),
        )

    def apply(
        self,
        source: Source,
        event: Event,
        *,
        performed: Command | None = None,
        refused: str | None = None,
        amount_after: int | None = None,
        index: int = 0,
    ) -> Step:
        """Decide ``event`` and persist the decision, as ``CheckoutService.apply_locked`` does."""
        before = self.current()
        outcome: Decision | InvalidTransition
        try:
            outcome = decide(before, event)
        except InvalidTransition as refusal:
            outcome = refusal
        else:
            changes = {
                name: value
                for name in ("authorized", "captured", "refunded", "cancelled", "capture_mode")
                if (value := getattr(outcome, name)) is not None
            }
            if amount_after is not None:
                changes["amount"] = amount_after
            self.facts = replace(self.facts, state=outcome.state, **changes)
            self.queue.extend(outcome.commands)
        in_flight = tuple(c for c in self.queue if c.kind in TRACKED)
        step = Step(
            source,
            event,
            before,
            outcome,
            self.current(),
            self.vipps,
            performed,
            refused,
            in_flight,
            index,
        )
        self.steps.append(step)
        return step

    # ---- Vipps --------------------------------------------------------------------------------

    def _vipps_sends(self, name: str, amount: int | None = None) -> None:
        """A webhook, as the intake turns it into an event (captures and refunds are signals)."""
        kind = {
            "AUTHORIZED": E.VIPPS_AUTHORIZED,
            "ABORTED": E.VIPPS_ABORTED,
            "EXPIRED": E.VIPPS_EXPIRED,
            "TERMINATED": E.VIPPS_TERMINATED,
            "CANCELLED": E.CANCEL_SUCCEEDED,
        }[name]
        self.news.append(Event(kind, amount=amount))

    def customer(self, action: str) -> bool:
        """The customer acts in the app; ``False`` if there is nothing to act on."""
        if self.vipps.state != "CREATED":
            return False
        match action:
            case "approve":
                self.vipps = replace(self.vipps, state="AUTHORIZED", authorized=self.vipps.amount)
                self._vipps_sends("AUTHORIZED", self.vipps.amount)
            case "decline":
                self.vipps = replace(self.vipps, state="ABORTED")
                self._vipps_sends("ABORTED")
            case _:
                self.vipps = replace(self.vipps, state="EXPIRED")
                self._vipps_sends("EXPIRED")
        return True

    def perform(
        self, *, index: int = 0, create: Create = "created", refuse: bool = False
    ) -> Step | None:
        """The outbox performs an unfinished command (the oldest unless ``index`` says
        otherwise) and records its result. ``refuse``: Vipps refuses a capture, refund or
        cancel for a reason of its own (a 400 the service cannot fix)."""
        if not self.queue:
            return None
        command = self.queue.pop(index)
        if refuse and command.kind in TRACKED:
            failed = {C.CAPTURE: E.CAPTURE_FAILED, C.REFUND: E.REFUND_FAILED}
            kind = failed.get(command.kind, E.CANCEL_FAILED)
            event = Event(kind, amount=command.amount, reason="refused")
            return self.apply("outbox", event, performed=command, refused="other", index=index)
        event, refused = self._call(command, create=create)
        return self.apply("outbox", event, performed=command, refused=refused, index=index)

    def _call(self, command: Command, *, create: Create) -> tuple[Event, str | None]:
        """Vipps's answer to one command, as the outbox turns it into an event."""
        v = self.vipps
        match command.kind:
            case C.EXCHANGE_TOKEN:
                return Event(E.IDENTIFY_FINISHED), None
            case C.CREATE_PAYMENT:
                if create == "refused" or v.state is not None:
                    return Event(E.PAYMENT_CREATE_REFUSED, reason="refused"), "create"
                self.vipps = Vipps(state="CREATED", amount=self.facts.amount)
                if create == "created, refusal seen":
                    # The answer was lost and a later attempt was refused: the payment exists
                    # at Vipps although we recorded the create as failed.
                    return Event(E.PAYMENT_CREATE_REFUSED, reason="refused"), "create"
                return Event(E.PAYMENT_CREATED), None
            case C.CAPTURE:
                amount = command.amount or 0
                if v.state != "AUTHORIZED":
                    return Event(E.CAPTURE_FAILED, amount=amount, reason="6080"), "6080"
                if amount > v.capturable:
                    return Event(E.CAPTURE_FAILED, amount=amount, reason="6090"), "6090"
                self.vipps = replace(v, captured=v.captured + amount)
                return self.vipps.totals(E.CAPTURE_SUCCEEDED), None
            case C.REFUND:
                amount = command.amount or 0
                if v.state != "AUTHORIZED" or amount > v.captured - v.refunded:
                    return Event(E.REFUND_FAILED, amount=amount, reason="6150"), "6150"
                self.vipps = replace(v, refunded=v.refunded + amount)
                return self.vipps.totals(E.REFUND_SUCCEEDED), None
            case C.CANCEL:
                return self._cancel(command)
            case _:
                raise AssertionError(command)

    def _cancel(self, command: Command) -> tuple[Event, str | None]:
        v = self.vipps
        if v.state == "CREATED":
            self.vipps = replace(v, state="TERMINATED", cancelled=v.amount)
            self._vipps_sends("TERMINATED", v.amount)
            return Event(E.VIPPS_TERMINATED, cancelled_total=v.amount), None
        if v.state == "TERMINATED":
            return Event(E.VIPPS_TERMINATED, cancelled_total=v.cancelled), None
        if v.state == "AUTHORIZED":
            if command.cancel_transaction_only:
                return Event(E.CANCEL_REFUSED_ALREADY_AUTHORIZED), "6060"
            if v.captured >= v.authorized:
                return Event(E.CANCEL_FAILED, reason="6040"), "6040"
            if v.capturable > 0:
                self._vipps_sends("CANCELLED", v.capturable)
                self.vipps = replace(v, cancelled=v.cancelled + v.capturable)
            return self.vipps.totals(E.CANCEL_SUCCEEDED), None
        # Not created (404), or declined / expired: the outbox reads the payment before
        # calling the refusal a failure.
        polled = v.polled()
        return (polled or Event(E.CANCEL_FAILED, reason="refused")), "refused"


# ---- generating histories ---------------------------------------------------------------------

# What a till plausibly asks for in each stage (anything may be asked anywhere; it is refused).
EARLY_REQUESTS = (E.POS_UPDATED, E.CANCEL_REQUESTED, E.CAPTURE_REQUESTED, E.REFUND_REQUESTED)
AUTHORIZED_REQUESTS = (E.CAPTURE_REQUESTED,) * 3 + (E.CANCEL_REQUESTED, E.REFUND_REQUESTED)
PAID_REQUESTS = (E.REFUND_REQUESTED,) * 3 + (E.CAPTURE_REQUESTED, E.CANCEL_REQUESTED)


def _requests(state: CheckoutState) -> tuple[EventKind, ...]:
    if state is S.AUTHORIZED:
        return AUTHORIZED_REQUESTS
    if state in PAID_STATES:
        return PAID_REQUESTS
    return EARLY_REQUESTS


TIMERS = (E.POS_UPDATE_TIMED_OUT, E.IDENTIFY_TIMED_OUT, E.SCAN_TIMED_OUT)


CREATE_OUTCOMES: tuple[Create, ...] = (
    ("created",) * 12 + ("refused",) + ("created, refusal seen",) * 2
)


def _possible(world: World) -> list[str]:
    """What can happen next, weighted so that histories get to the money: the outbox and
    Vipps's news are the busy parts, and what ends a checkout early is the rarer."""
    money_at_stake = world.facts.state is S.AUTHORIZED or world.facts.state in PAID_STATES
    # What moves a checkout on comes first: hypothesis leans towards the first choices.
    actions: list[str] = []
    if world.queue:
        actions += ["outbox"] * 4
    if world.facts.state is S.AWAITING_SCAN:
        actions += ["scan"] * 6
    if world.vipps.state == "CREATED":
        actions += ["customer"] * 3
    if world.news:
        actions += ["webhook"] * 3
    actions += ["till"] * (4 if money_at_stake else 1)
    if world.vipps.state is not None:
        actions += ["poll"]
    actions += ["timer"]
    return actions


def _till_amount(draw: st.DrawFn, facts: CheckoutFacts, kind: EventKind) -> int | None:
    """What a till asks to capture or refund: mostly sensible, sometimes too much or nothing."""
    room = facts.capturable if kind is E.CAPTURE_REQUESTED else facts.refundable
    part = max(1, room // 2)
    return draw(
        st.sampled_from([part, room, None, part, max(1, room // 3), room + 1, 0, facts.amount])
    )


@st.composite
def histories(draw: st.DrawFn, max_steps: int = 40) -> World:
    """A checkout's history from its creation: every step one that can happen next."""
    amount = draw(st.sampled_from([AMOUNT, AMOUNT, 1, 4999]))
    club = draw(st.booleans())
    world = World(
        CheckoutFacts(
            S.AWAITING_SCAN,
            amount,
            capture_mode=draw(st.sampled_from(list(CapturePolicy))),
            club_step=club,
            member_price_hold=club and draw(st.booleans()),
            late_approval=draw(st.sampled_from(list(LateApprovalPolicy))),
        )
    )
    delivered = 0  # webhooks arrive in order by default; a late or repeated one is drawn
    for _ in range(max_steps):
        facts = world.current()
        # Nothing more can happen on its own: no call in flight, no webhook on its way, and no
        # payment waiting for the customer.
        quiet = not world.queue and delivered == len(world.news) and world.vipps.state != "CREATED"
        if facts.state.is_final and quiet:
            # Over, unless the till still refunds: what may come late is played by settle().
            refundable = facts.state in (S.CAPTURED, S.PARTIALLY_REFUNDED)
            if draw(st.integers(0, 3)) != 0 if not refundable else draw(st.integers(0, 3)) == 0:
                break
        match draw(st.sampled_from(_possible(world))):
            case "till":
                kind = draw(st.sampled_from(_requests(facts.state)))
                if kind is E.POS_UPDATED:
                    # A member price: never above the original amount.
                    lower = draw(st.sampled_from([facts.amount, max(1, facts.amount - 1000)]))
                    world.apply("till", Event(kind, amount=lower), amount_after=lower)
                elif kind in (E.CAPTURE_REQUESTED, E.REFUND_REQUESTED):
                    world.apply("till", Event(kind, amount=_till_amount(draw, facts, kind)))
                else:
                    world.apply("till", Event(kind))
            case "timer":
                world.apply("timer", Event(draw(st.sampled_from(TIMERS))))
            case "scan":
                world.apply("customer", Event(E.CUSTOMER_SCANNED))
            case "customer":
                world.customer(draw(st.sampled_from(["approve"] * 4 + ["decline", "expire"])))
            case "outbox":
                # Commands of a checkout run in order; now and then one does not (a lease that
                # ran out under a slow call, an operator's retry), and now and then Vipps
                # refuses one for a reason of its own.
                index = draw(st.sampled_from([0] * 7 + [len(world.queue) - 1]))
                world.perform(
                    index=index,
                    create=draw(st.sampled_from(CREATE_OUTCOMES)),
                    refuse=draw(st.integers(0, 11)) == 0,
                )
            case "webhook":
                if delivered < len(world.news) and draw(st.integers(0, 3)):
                    index, delivered = delivered, delivered + 1
                else:  # a late, reordered or repeated delivery
                    index = draw(st.integers(0, len(world.news) - 1))
                world.apply("news", world.news[index])
            case "poll":
                polled = world.vipps.polled()
                if polled is not None:
                    world.apply("news", polled)
    return world


def settle(world: World, rounds: int = 12) -> None:
    """Let everything run its course: the customer never comes back (the payment expires at
    Vipps), every timer fires, every command is performed, every webhook and a final poll
    arrive. Stops once a round changes nothing."""
    for _ in range(rounds):
        before = (world.current(), world.vipps, len(world.queue), len(world.news))
        world.customer("expire")
        for timer in TIMERS:
            world.apply("timer", Event(timer))
        while world.queue:
            world.perform()
        for event in list(world.news):
            world.apply("news", event)
        polled = world.vipps.polled()
        if polled is not None:
            world.apply("news", polled)
        if (world.current(), world.vipps, len(world.queue), len(world.news)) == before:
            return
    raise AssertionError(f"the history never settled: {world.current()} {world.queue}")
