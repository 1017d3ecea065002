"""Request and response bodies of the POS and admin API (camelCase on the wire)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic.alias_generators import to_camel

from app.models import Checkout, Store, Till, WebhookRegistration


class ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


# ---- OpenAPI examples (validated against their models by tests/api/test_openapi_examples.py) --

_RECEIPT_EXAMPLE: dict[str, Any] = {
    "orderLines": [
        {
            "name": "socks",
            "id": "line_item_1",
            "totalAmount": 10000,
            "totalAmountExcludingTax": 8000,
            "totalTaxAmount": 2000,
            "taxRate": 2500,
            "unitInfo": {"unitPrice": 5000, "quantity": "2", "quantityUnit": "PCS"},
        }
    ],
    "bottomLine": {"currency": "NOK", "receiptNumber": "0527013501", "posId": "oslo-1-till-3"},
}
_CHECKOUT_EXAMPLE: dict[str, Any] = {
    "id": "6f1c2e1a-3d4b-4f7a-9a51-0c2f4f6b9e10",
    "tillId": "oslo-1-till-3",
    "storeId": "oslo-1",
    "state": "CAPTURED",
    "final": True,
    "paymentSent": True,
    "amount": {"value": 10000, "currency": "NOK"},
    "originalAmount": 10000,
    "captureMode": "AUTO",
    "description": "Purchase of socks",
    "reference": "oslo-1-till-3-5f0c9a1b2c3d",
    "receipt": _RECEIPT_EXAMPLE,
    "warnings": [],
    "authorizedAmount": 10000,
    "capturedAmount": 10000,
    "refundedAmount": 0,
    "cancelledAmount": 0,
    "failure": None,
    "member": None,
    "createdAt": "2026-03-02T10:15:00Z",
    "updatedAt": "2026-03-02T10:15:21Z",
    "expiresAt": "2026-03-02T10:30:00Z",
    "scannedAt": "2026-03-02T10:15:04Z",
    "paymentRequestedAt": "2026-03-02T10:15:05Z",
    "authorizedAt": "2026-03-02T10:15:19Z",
    "finishedAt": "2026-03-02T10:15:21Z",
    "version": 6,
}
_TILL_EXAMPLE: dict[str, Any] = {
    "tillId": "oslo-1-till-3",
    "storeId": "oslo-1",
    "msn": "123456",
    "merchantQrId": "oslo-1-till-3",
    "locationDescription": "Kasse 3",
    "status": "ACTIVE",
    "qrStatus": "SYNCED",
    "apiKeyId": "3f2a9c4d1e6b7a80",
    "createdAt": "2026-03-01T08:00:00Z",
    "updatedAt": "2026-03-01T08:00:00Z",
}


def _examples(*examples: dict[str, Any]) -> ConfigDict:
    """Model config adding OpenAPI ``examples``; the rest is inherited from :class:`ApiModel`."""
    return ConfigDict(json_schema_extra={"examples": list(examples)})


class Money(ApiModel):
    model_config = _examples({"value": 12900, "currency": "NOK"})

    value: int = Field(description="Minor units (øre, cents).", examples=[12900])
    currency: Literal["NOK", "DKK", "EUR"]


class CreateCheckoutRequest(ApiModel):
    amount: int = Field(description="Total in minor units, e.g. 12900 = 129.00 NOK.", ge=0)
    currency: Literal["NOK", "DKK", "EUR"] = "NOK"
    description: str | None = Field(
        default=None,
        description="Shown to the customer in the app (3–100 characters).",
        examples=["Kjøp Kasse 3"],
    )
    capture_mode: Literal["AUTO", "MANUAL"] = Field(
        default="AUTO",
        description="AUTO captures as soon as the customer approves; MANUAL waits for /capture.",
    )
    receipt: dict[str, Any] | None = Field(
        default=None,
        description="Vipps receipt: `orderLines` and `bottomLine` (Order Management schema). "
        "`bottomLine.posId` defaults to the till id, its currency to the checkout's.",
    )

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "amount": 10000,
                    "currency": "NOK",
                    "description": "Purchase of socks",
                    "receipt": {
                        "orderLines": [
                            {
                                "name": "socks",
                                "id": "line_item_1",
                                "totalAmount": 10000,
                                "totalAmountExcludingTax": 8000,
                                "totalTaxAmount": 2000,
                                "taxRate": 2500,
                                "unitInfo": {
                                    "unitPrice": 5000,
                                    "quantity": "2",
                                    "quantityUnit": "PCS",
                                },
                            }
                        ],
                        "bottomLine": {"currency": "NOK", "receiptNumber": "0527013501"},
                    },
                }
            ]
        },
    )


class AmountRequest(ApiModel):
    model_config = _examples({"amount": 5000}, {})

    amount: int | None = Field(
        default=None, gt=0, description="Minor units; omit for everything that is left."
    )


class Failure(ApiModel):
    model_config = _examples({"code": "2105", "detail": "the customer token has expired"})

    code: str | None
    detail: str | None


class MemberInfo(ApiModel):
    """The customer-club step's result. ``outcome``: member, enrolled, not_member, enrolling,
    enrollment_refused, enrollment_expired, enrollment_failed, exchange_failed, lookup_failed,
    no_customer_token. ``note`` says why, for people (never personal data)."""

    model_config = _examples(
        {"id": "m-1042", "outcome": "member", "note": None, "priceHoldUntil": None}
    )

    id: str | None
    outcome: str | None
    note: str | None
    price_hold_until: datetime | None = Field(
        default=None,
        description="In AWAITING_POS_UPDATE: send member prices before this, or the original "
        "amount is requested.",
    )


class CheckoutOut(ApiModel):
    model_config = _examples(_CHECKOUT_EXAMPLE)

    id: str
    till_id: str
    store_id: str
    state: str
    final: bool
    payment_sent: bool = Field(
        description="Vipps accepted the payment request: the customer has it in the app."
    )
    amount: Money
    original_amount: int
    capture_mode: str
    description: str
    reference: str
    receipt: dict[str, Any]
    warnings: list[dict[str, Any]]
    authorized_amount: int
    captured_amount: int
    refunded_amount: int
    cancelled_amount: int
    failure: Failure | None
    member: MemberInfo | None
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    scanned_at: datetime | None
    payment_requested_at: datetime | None
    authorized_at: datetime | None
    finished_at: datetime | None
    version: int

    @classmethod
    def of(cls, row: Checkout) -> CheckoutOut:
        from app.domain.state_machine import CheckoutState

        failure = (
            Failure(code=row.failure_code, detail=row.failure_detail)
            if row.failure_code or row.failure_detail
            else None
        )
        member = (
            MemberInfo(
                id=row.member_id,
                outcome=row.club_outcome,
                note=row.club_note,
                price_hold_until=row.pos_update_deadline
                if row.state == CheckoutState.AWAITING_POS_UPDATE.value
                else None,
            )
            if row.club_outcome
            else None
        )
        return cls(
            id=row.id,
            till_id=row.till_id,
            store_id=row.store_id,
            state=row.state,
            final=CheckoutState(row.state).is_final,
            payment_sent=row.vipps_state is not None,
            amount=Money.model_validate({"value": row.amount_value, "currency": row.currency}),
            original_amount=row.original_amount_value,
            capture_mode=row.capture_mode,
            description=row.description,
            reference=row.reference,
            receipt=row.receipt or {},
            warnings=row.warnings or [],
            authorized_amount=row.authorized_value,
            captured_amount=row.captured_value,
            refunded_amount=row.refunded_value,
            cancelled_amount=row.cancelled_value,
            failure=failure,
            member=member,
            created_at=row.created_at,
            updated_at=row.updated_at,
            expires_at=row.expires_at,
            scanned_at=row.scanned_at,
            payment_requested_at=row.payment_requested_at,
            authorized_at=row.authorized_at,
            finished_at=row.finished_at,
            version=row.version,
        )


class ActiveCheckoutOut(ApiModel):
    model_config = _examples(
        {
            "checkout": {
                **_CHECKOUT_EXAMPLE,
                "state": "AWAITING_SCAN",
                "final": False,
                "paymentSent": False,
                "authorizedAmount": 0,
                "capturedAmount": 0,
                "scannedAt": None,
                "paymentRequestedAt": None,
                "authorizedAt": None,
                "finishedAt": None,
                "version": 1,
            }
        },
        {"checkout": None},
    )

    checkout: CheckoutOut | None


class RegisterTillRequest(ApiModel):
    model_config = _examples(
        {
            "tillId": "oslo-1-till-3",
            "storeId": "oslo-1",
            "locationDescription": "Kasse 3",
            "msn": "123456",
        }
    )

    till_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", examples=["oslo-1-till-3"])
    store_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", examples=["oslo-1"])
    location_description: str = Field(
        min_length=1,
        max_length=36,
        description="Shown in the app after a scan (≤ 36).",
        examples=["Kasse 3"],
    )
    msn: str | None = Field(default=None, pattern=r"^[0-9]{4,6}$")


class UpdateTillRequest(ApiModel):
    model_config = _examples({"locationDescription": "Kasse 3 (ved utgangen)"})

    location_description: str | None = Field(default=None, min_length=1, max_length=36)


class TillOut(ApiModel):
    model_config = _examples(_TILL_EXAMPLE)

    till_id: str
    store_id: str
    msn: str
    merchant_qr_id: str
    location_description: str
    status: str
    qr_status: str
    api_key_id: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Till) -> TillOut:
        return cls(
            till_id=row.id,
            store_id=row.store_id,
            msn=row.msn,
            merchant_qr_id=row.merchant_qr_id,
            location_description=row.location_description,
            status=row.status,
            qr_status=row.qr_status,
            api_key_id=row.api_key_id,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class NewTillOut(TillOut):
    model_config = _examples({**_TILL_EXAMPLE, "apiKey": "vpk_3f2a9c4d1e6b7a80_Jq8...shown-once"})

    api_key: str = Field(description="Shown once. Store it in the till; we keep only a hash.")


class StoreRequest(ApiModel):
    model_config = _examples(
        {
            "name": "Oslo City",
            "clubPolicy": "lookup",
            "memberPriceHold": True,
            "memberPriceHoldSeconds": 30,
        }
    )

    name: str | None = Field(default=None, max_length=200)
    club_policy: Literal["off", "lookup", "enroll"] | None = None
    member_price_hold: bool | None = None
    member_price_hold_seconds: int | None = Field(default=None, ge=1, le=300)


class StoreOut(ApiModel):
    model_config = _examples(
        {
            "storeId": "oslo-1",
            "name": "Oslo City",
            "clubPolicy": "lookup",
            "memberPriceHold": True,
            "memberPriceHoldSeconds": 30,
        }
    )

    store_id: str
    name: str
    club_policy: str
    member_price_hold: bool
    member_price_hold_seconds: int

    @classmethod
    def of(cls, row: Store) -> StoreOut:
        return cls(
            store_id=row.id,
            name=row.name,
            club_policy=row.club_policy,
            member_price_hold=row.member_price_hold,
            member_price_hold_seconds=row.member_price_hold_seconds,
        )


class WebhookRegistrationOut(ApiModel):
    model_config = _examples(
        {
            "id": "5b0a3f4e-2c1d-4e8f-9a7b-6c5d4e3f2a1b",
            "msn": "123456",
            "url": "https://pos.example.com/webhooks/vipps/123456",
            "events": ["user.checked-in.v1", "epayments.payment.authorized.v1"],
            "status": "ACTIVE",
            "createdAt": "2026-03-01T08:00:00Z",
        }
    )

    id: str
    msn: str
    url: str
    events: list[str]
    status: str
    created_at: datetime

    @classmethod
    def of(cls, row: WebhookRegistration) -> WebhookRegistrationOut:
        return cls(
            id=row.id,
            msn=row.msn,
            url=row.url,
            events=list(row.events),
            status=row.status,
            created_at=row.created_at,
        )


class EnsureOut(ApiModel):
    model_config = _examples(
        {
            "msn": "123456",
            "registrationId": "5b0a3f4e-2c1d-4e8f-9a7b-6c5d4e3f2a1b",
            "created": True,
            "removed": [],
            "foreign": [],
        }
    )

    msn: str
    registration_id: str
    created: bool
    removed: list[str]
    foreign: list[str]


class VippsKeysRequest(ApiModel):
    """A sales unit's own API keys, from the Vipps MobilePay business portal. Never echoed."""

    model_config = _examples(
        {
            "clientId": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
            "clientSecret": "<client secret>",
            "subscriptionKey": "<Ocp-Apim-Subscription-Key>",
            "verify": True,
        }
    )

    client_id: SecretStr = Field(min_length=1, max_length=500)
    client_secret: SecretStr = Field(min_length=1, max_length=500)
    subscription_key: SecretStr = Field(min_length=1, max_length=500)
    verify: bool = Field(
        default=True,
        description="Try the keys at Vipps for this MSN before storing them (an access token "
        "and the sales unit's QR list): wrong keys or another sales unit's are refused.",
    )


class VippsKeySetOut(ApiModel):
    """A key set we hold: where it comes from and its fingerprint, never the keys."""

    model_config = _examples(
        {
            "msn": "123456",
            "source": "sales_unit",
            "fingerprint": "5d41402abc4b",
            "createdAt": "2026-03-01T08:00:00Z",
            "rotatedAt": None,
        }
    )

    msn: str | None = Field(description="None for partner keys: they cover every sales unit.")
    source: Literal["sales_unit", "partner", "configured"]
    fingerprint: str
    created_at: datetime | None = None
    rotated_at: datetime | None = None


class SavedVippsKeysOut(VippsKeySetOut):
    model_config = _examples(
        {
            "msn": "654321",
            "source": "sales_unit",
            "fingerprint": "9b71d224bd62",
            "createdAt": "2026-03-01T08:00:00Z",
            "rotatedAt": "2026-06-01T08:00:00Z",
            "created": False,
            "verified": True,
        }
    )

    created: bool = Field(description="True when the sales unit had no keys here before.")
    verified: bool = Field(description="The keys were tried at Vipps for this MSN first.")


class InboxEventOut(ApiModel):
    model_config = _examples(
        {
            "id": 4711,
            "msn": "123456",
            "eventType": "epayments.payment.authorized.v1",
            "reference": "oslo-1-till-3-5f0c9a1b2c3d",
            "status": "PROCESSED",
            "outcome": "applied",
            "attempts": 1,
            "lastError": None,
            "checkoutId": "6f1c2e1a-3d4b-4f7a-9a51-0c2f4f6b9e10",
            "receivedAt": "2026-03-02T10:15:19Z",
            "processedAt": "2026-03-02T10:15:19Z",
        }
    )

    id: int
    msn: str | None
    event_type: str
    reference: str | None
    status: str
    outcome: str | None
    attempts: int
    last_error: str | None
    checkout_id: str | None
    received_at: datetime
    processed_at: datetime | None


class WebhookAck(ApiModel):
    model_config = _examples({"status": "accepted"})

    status: Literal["accepted", "duplicate"]
