"""Request and response bodies of the POS and admin API (camelCase on the wire)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from app.models import Checkout, Store, Till, WebhookRegistration


class ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Money(ApiModel):
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
    amount: int | None = Field(
        default=None, gt=0, description="Minor units; omit for everything that is left."
    )


class Failure(ApiModel):
    code: str | None
    detail: str | None


class MemberInfo(ApiModel):
    id: str | None
    outcome: str | None
    note: str | None


class CheckoutOut(ApiModel):
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
            MemberInfo(id=row.member_id, outcome=row.club_outcome, note=row.club_note)
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
    checkout: CheckoutOut | None


class RegisterTillRequest(ApiModel):
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
    location_description: str | None = Field(default=None, min_length=1, max_length=36)


class TillOut(ApiModel):
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
    api_key: str = Field(description="Shown once. Store it in the till; we keep only a hash.")


class StoreRequest(ApiModel):
    name: str | None = Field(default=None, max_length=200)
    club_policy: Literal["off", "lookup", "enroll"] | None = None
    member_price_hold: bool | None = None
    member_price_hold_seconds: int | None = Field(default=None, ge=1, le=300)


class StoreOut(ApiModel):
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
    msn: str
    registration_id: str
    created: bool
    removed: list[str]
    foreign: list[str]


class InboxEventOut(ApiModel):
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
    status: Literal["accepted", "duplicate"]
