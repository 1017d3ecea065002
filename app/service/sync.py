"""Translate what Vipps says about a payment (GET or a modification's answer) into events.

Vipps's ``state`` stays ``AUTHORIZED`` after capture, cancel and refund; money movements are only
visible in ``aggregate`` (REFERENCE.md §7.4), so totals are passed as absolute values and applying
the same answer twice changes nothing.
"""

from __future__ import annotations

from app.domain.state_machine import CapturePolicy, CheckoutState, Event, EventKind
from app.persistence.records import CheckoutRecord
from app.vipps.schemas import Aggregate, PaymentDetails


def totals(aggregate: Aggregate) -> dict[str, int]:
    return {
        "authorized_total": aggregate.authorized_amount.value,
        "captured_total": aggregate.captured_amount.value,
        "refunded_total": aggregate.refunded_amount.value,
        "cancelled_total": aggregate.cancelled_amount.value,
    }


def with_totals(kind: EventKind, aggregate: Aggregate, *, amount: int | None = None) -> Event:
    """An event carrying Vipps's absolute money totals."""
    return Event(
        kind,
        amount=amount,
        authorized_total=aggregate.authorized_amount.value,
        captured_total=aggregate.captured_amount.value,
        refunded_total=aggregate.refunded_amount.value,
        cancelled_total=aggregate.cancelled_amount.value,
    )


def event_from_details(details: PaymentDetails) -> Event | None:
    """The payment-state event a GET implies, without regard to our own state."""
    sums = totals(details.aggregate)
    match details.state:
        case "AUTHORIZED":
            return with_totals(
                EventKind.VIPPS_AUTHORIZED, details.aggregate, amount=details.amount.value
            )
        case "ABORTED":
            return Event(EventKind.VIPPS_ABORTED)
        case "EXPIRED":
            return Event(EventKind.VIPPS_EXPIRED)
        case "TERMINATED":
            return Event(EventKind.VIPPS_TERMINATED, cancelled_total=sums["cancelled_total"])
        case _:
            return None


def repair_events(checkout: CheckoutRecord, details: PaymentDetails) -> list[Event]:
    """What to apply so our checkout agrees with Vipps's view of the payment."""
    state = checkout.state
    sums = totals(details.aggregate)
    if details.state != "AUTHORIZED":
        event = event_from_details(details)
        return [event] if event else []
    match state:
        case CheckoutState.PAYMENT_REQUESTED:
            return [
                with_totals(
                    EventKind.VIPPS_AUTHORIZED, details.aggregate, amount=details.amount.value
                )
            ]
        case CheckoutState.CANCELLING:
            if sums["cancelled_total"] >= sums["authorized_total"] > 0:
                return [with_totals(EventKind.CANCEL_SUCCEEDED, details.aggregate)]
            # Approved before our cancel-only-if-pending: apply the late-approval policy.
            return [Event(EventKind.CANCEL_REFUSED_ALREADY_AUTHORIZED)]
        case CheckoutState.AUTHORIZED:
            if sums["captured_total"] > checkout.captured_value:
                return [with_totals(EventKind.CAPTURE_SUCCEEDED, details.aggregate)]
            if sums["cancelled_total"] > checkout.cancelled_value:
                return [with_totals(EventKind.CANCEL_SUCCEEDED, details.aggregate)]
            if (
                checkout.capture_mode is CapturePolicy.AUTO
                and checkout.capture_pending_value == 0
                and checkout.failure_code is None
                and checkout.authorized_value > checkout.captured_value
            ):
                # Authorized, auto-capture, nothing queued: the capture decision was lost.
                return [Event(EventKind.CAPTURE_REQUESTED)]
            return []
        case CheckoutState.CAPTURED | CheckoutState.PARTIALLY_REFUNDED:
            if sums["refunded_total"] > checkout.refunded_value:
                return [with_totals(EventKind.REFUND_SUCCEEDED, details.aggregate)]
            return []
        case (
            CheckoutState.AWAITING_SCAN
            | CheckoutState.IDENTIFYING
            | CheckoutState.AWAITING_POS_UPDATE
            | CheckoutState.REFUNDED
            | CheckoutState.CANCELLED
            | CheckoutState.REJECTED
            | CheckoutState.EXPIRED
            | CheckoutState.FAILED
        ):
            # A final unpaid checkout that Vipps shows authorized: the state machine releases it.
            return [
                with_totals(
                    EventKind.VIPPS_AUTHORIZED, details.aggregate, amount=details.amount.value
                )
            ]
