"""In-memory records of the simulator. Plain dataclasses; the engine owns all mutation.

Money is integer minor units throughout. A payment's aggregate always satisfies
``captured + cancelled <= authorized`` and ``refunded <= captured`` (the engine checks before it
changes anything, so a rejected call leaves every record untouched).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from app.simulator.config import CredentialSet


class PaymentState(StrEnum):
    CREATED = "CREATED"
    AUTHORIZED = "AUTHORIZED"
    ABORTED = "ABORTED"
    EXPIRED = "EXPIRED"
    TERMINATED = "TERMINATED"


class EventName(StrEnum):
    CREATED = "CREATED"
    ABORTED = "ABORTED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"
    CAPTURED = "CAPTURED"
    REFUNDED = "REFUNDED"
    AUTHORIZED = "AUTHORIZED"
    TERMINATED = "TERMINATED"

    @property
    def webhook_event(self) -> str:
        """The Webhooks API event type, e.g. ``epayments.payment.authorized.v1`` (§7.9)."""
        return f"epayments.payment.{self.value.lower()}.v1"


CHECKED_IN_EVENT = "user.checked-in.v1"
EPAYMENT_EVENTS = tuple(name.webhook_event for name in EventName)


def iso_millis(moment: datetime) -> str:
    """``2023-08-14T12:48:46.260Z``: the ePayment event timestamp format."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def iso_7_digits(moment: datetime) -> str:
    """``2023-10-06T10:45:40.3061965Z``: .NET's 7 fractional digits, as in ``initiatedAt`` (§4)."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0Z"


def money(currency: str, value: int) -> dict[str, Any]:
    return {"currency": currency, "value": value}


@dataclass(frozen=True)
class Result:
    """A finished response: what an idempotency key remembers and what a handler returns."""

    status: int
    body: Any = None
    media_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class AccessToken:
    token: str
    credentials: CredentialSet
    expires_at: datetime


@dataclass
class MerchantQr:
    msn: str
    merchant_qr_id: str
    location_description: str
    category: str | None
    content_id: str


@dataclass
class CustomerTokenGrant:
    """A ``customerToken`` issued by a scan: bound to one MSN and one test user."""

    token: str
    msn: str
    merchant_qr_id: str
    phone_number: str
    issued_at: datetime
    expires_at: datetime


@dataclass
class PaymentEvent:
    name: EventName
    value: int
    psp_reference: str
    timestamp: datetime
    idempotency_key: str | None
    success: bool = True


@dataclass
class Payment:
    msn: str
    reference: str
    psp_reference: str
    currency: str
    value: int
    user_flow: str
    created_at: datetime
    expires_at: datetime
    create_idempotency_key: str | None
    user_phone: str | None
    profile_scope: str | None
    metadata: dict[str, str] | None
    redirect_url: str | None
    landing_token: str
    state: PaymentState = PaymentState.CREATED
    authorized: int = 0
    captured: int = 0
    cancelled: int = 0
    refunded: int = 0
    sub: str | None = None
    events: list[PaymentEvent] = field(default_factory=list)
    authorized_at: datetime | None = None
    last_captured_at: datetime | None = None
    # The user is approving in the app right now (``/_sim/payments/{ref}/authorizing``): a
    # cancel is refused with 423 / 6250 until they finish (REFERENCE.md §7.6).
    authorizing: bool = False
    # The issuer let the reservation go before it was captured: captures answer 6260 (§7.5).
    released_early: bool = False
    # The next this many captures answer 6280, "transient failure; retry with the same key".
    transient_capture_failures: int = 0

    def aggregate(self) -> dict[str, Any]:
        return {
            "authorizedAmount": money(self.currency, self.authorized),
            "cancelledAmount": money(self.currency, self.cancelled),
            "capturedAmount": money(self.currency, self.captured),
            "refundedAmount": money(self.currency, self.refunded),
        }

    def get_response(self) -> dict[str, Any]:
        """``GetPaymentResponse`` (ePayment spec 1.4.1, §7.2)."""
        body: dict[str, Any] = {
            "aggregate": self.aggregate(),
            "amount": money(self.currency, self.value),
            "state": self.state.value,
            "paymentMethod": {"type": "WALLET"},
            "profile": {"sub": self.sub} if self.sub else {},
            "pspReference": self.psp_reference,
            "reference": self.reference,
        }
        if self.state is PaymentState.AUTHORIZED:
            body["paymentMethod"]["cardBin"] = "540185"
        if self.redirect_url:
            body["redirectUrl"] = self.redirect_url
        if self.metadata is not None:
            body["metadata"] = self.metadata
        return body

    def modification_response(self) -> dict[str, Any]:
        """``ModificationResponse`` of capture, cancel and refund (§7.5)."""
        return {
            "amount": money(self.currency, self.value),
            "state": self.state.value,
            "aggregate": self.aggregate(),
            "pspReference": self.psp_reference,
            "reference": self.reference,
        }

    def event_body(self, event: PaymentEvent) -> dict[str, Any]:
        """``PaymentEvent`` of the event log (§7.3)."""
        return {
            "reference": self.reference,
            "pspReference": event.psp_reference,
            "name": event.name.value,
            "amount": money(self.currency, event.value),
            "timestamp": iso_millis(event.timestamp),
            "idempotencyKey": event.idempotency_key,
            "success": event.success,
        }

    def webhook_body(self, event: PaymentEvent) -> dict[str, Any]:
        """``WebhookEvent`` (§7.9): the log entry plus the MSN."""
        return {"msn": self.msn, **self.event_body(event)}


@dataclass
class WebhookRegistration:
    id: str
    url: str
    events: tuple[str, ...]
    secret: str
    msn: str | None  # None: a partner registration covering every MSN of its credentials
    client_id: str
    msns: tuple[str, ...]

    def listing(self) -> dict[str, Any]:
        return {"id": self.id, "url": self.url, "events": list(self.events)}


@dataclass
class CibaRequest:
    """A merchant-initiated login waiting for the user's answer in the app."""

    auth_req_id: str
    client_id: str
    msn: str
    phone_number: str
    scope: tuple[str, ...]
    binding_message: str | None
    created_at: datetime
    expires_at: datetime
    interval: int
    status: str = "pending"  # pending | consented | refused | redeemed
    last_poll: datetime | None = None


@dataclass
class LoginGrant:
    access_token: str
    msn: str
    phone_number: str
    scope: tuple[str, ...]
    expires_at: datetime


@dataclass
class LedgerEntry:
    """One mutating call as the simulator saw it. ``effect`` is True when state changed."""

    seq: int
    at: datetime
    operation: str
    msn: str | None
    reference: str | None
    idempotency_key: str | None
    status: int
    effect: bool
    replay: bool = False
    fault: str | None = None
    response_dropped: bool = False
    received_epoch: float | None = None  # arrival, epoch seconds (``at`` is when it finished)

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": iso_millis(self.at),
            "receivedAtEpoch": self.received_epoch,
            "operation": self.operation,
            "msn": self.msn,
            "reference": self.reference,
            "idempotencyKey": self.idempotency_key,
            "status": self.status,
            "effect": self.effect,
            "replay": self.replay,
            "fault": self.fault,
            "responseDropped": self.response_dropped,
        }
