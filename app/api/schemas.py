"""Request and response bodies of the POS and admin API (camelCase on the wire)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PlainValidator,
    SecretStr,
    TypeAdapter,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from app.domain.receipt import (
    MAX_AMOUNT,
    MAX_ORDER_LINES,
    SHORT_TEXT_MAX_LENGTH,
    TAX_PERCENTAGE_MAX,
    TAX_RATE_MAX,
    TEXT_MAX_LENGTH,
)
from app.errors import WARNING_CODES
from app.models import Store, Till, WebhookRegistration
from app.persistence.records import CheckoutRecord


class ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ApiRequest(ApiModel):
    """A request body. Strict JSON types: ``true``, ``"5"`` and ``12900.0`` are not integers,
    ``"true"`` is not a boolean (each is ``invalid_type``)."""

    model_config = ConfigDict(strict=True)


_AMOUNT_TEXT = (
    "Minor units (øre, cents), a JSON integer: 12900 = 129.00 NOK. At least the currency's "
    f"minimum (NOK 100, DKK 1, EUR 1), at most {MAX_AMOUNT}."
)
# Amounts in requests: integers in minor units, within the Vipps ePayment bounds.
Amount = Annotated[int, Field(ge=1, le=MAX_AMOUNT, description=_AMOUNT_TEXT, examples=[12900])]


# ---- The receipt (Vipps Order Management "latest"), for the OpenAPI document ------------------
#
# The service checks receipts with app/domain/receipt.py (every finding named and coded at once,
# unknown keys ignored, deprecated ones warned about); these models describe the same rules for
# clients and are what the document shows for ``receipt``.


class ReceiptModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")


_LINE_AMOUNT = "Minor units, integer; `totalAmount` = `totalAmountExcludingTax` + `totalTaxAmount`."


class UnitInfo(ReceiptModel):
    unit_price: int = Field(ge=0, description="Price of one unit, minor units.")
    quantity: str = Field(
        pattern=r"^[0-9]+(\.[0-9]{1,8})?$",
        max_length=10,
        description='Decimal string, e.g. "2" or "0.822".',
    )
    # The same values as app/domain/receipt.py's QUANTITY_UNITS (a test holds them equal).
    quantity_unit: Literal["PCS", "KG", "KM", "MINUTE", "LITRE", "KWH"] | None = None


class OrderLine(ReceiptModel):
    name: str = Field(min_length=1, max_length=TEXT_MAX_LENGTH)
    id: str = Field(min_length=1, max_length=TEXT_MAX_LENGTH, description="Your product id.")
    total_amount: int = Field(description=_LINE_AMOUNT)
    total_amount_excluding_tax: int
    total_tax_amount: int
    tax_rate: int | None = Field(
        default=None,
        ge=0,
        le=TAX_RATE_MAX,
        description="Basis points: 2500 = 25 %. This or `taxPercentage` is required.",
    )
    tax_percentage: int | None = Field(
        default=None, ge=0, le=TAX_PERCENTAGE_MAX, description="Deprecated: use `taxRate`."
    )
    unit_info: UnitInfo | None = None
    discount: int | None = Field(default=None, ge=0, description="Minor units, included.")
    product_url: str | None = Field(default=None, max_length=TEXT_MAX_LENGTH)
    is_return: bool | None = Field(default=None, description="Counts negative in the sum.")
    is_shipping: bool | None = None


class Barcode(ReceiptModel):
    format: Literal["EAN-13", "CODE 39", "CODE 128"]  # = BARCODE_FORMATS
    data: str = Field(max_length=TEXT_MAX_LENGTH)


class PaymentSources(ReceiptModel):
    gift_card: int | None = Field(default=None, ge=0)
    card: int | None = Field(default=None, ge=0)
    voucher: int | None = Field(default=None, ge=0)
    cash: int | None = Field(default=None, ge=0)


class BottomLine(ReceiptModel):
    currency: Literal["NOK", "DKK", "EUR"] | None = Field(
        default=None, description="Defaults to the checkout's currency; must equal it."
    )
    tip_amount: int | None = Field(
        default=None, ge=0, le=MAX_AMOUNT, description="Part of `amount`."
    )
    pos_id: str | None = Field(
        default=None, max_length=SHORT_TEXT_MAX_LENGTH, description="Defaults to the till id."
    )
    receipt_number: str | None = Field(default=None, max_length=SHORT_TEXT_MAX_LENGTH)
    payment_sources: PaymentSources | None = None
    barcode: Barcode | None = None


class Receipt(ReceiptModel):
    """The itemised receipt shown in the app. The order lines (returned lines counting negative)
    plus `bottomLine.tipAmount` must add up to the checkout's `amount`."""

    order_lines: list[OrderLine] = Field(min_length=1, max_length=MAX_ORDER_LINES)
    bottom_line: BottomLine | None = None


RECEIPT_MODELS: tuple[type[BaseModel], ...] = (
    Receipt,
    OrderLine,
    UnitInfo,
    BottomLine,
    Barcode,
    PaymentSources,
)


def _raw_receipt(value: Any) -> Any:
    """The receipt object as sent: app/domain/receipt.py checks it, naming every finding."""
    if value is not None and not isinstance(value, dict):
        raise PydanticCustomError("dict_type", "must be an object")
    return value


class DocumentedAs:
    """Annotation: show ``type_`` in the JSON schema while validating the annotated type."""

    def __init__(self, type_: Any) -> None:
        self.type_ = type_

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(TypeAdapter(self.type_).core_schema)


# Documented as the typed Receipt; at run time the JSON object itself, for the receipt rules.
ReceiptIn = Annotated[
    dict[str, Any] | None, PlainValidator(_raw_receipt), DocumentedAs(Receipt | None)
]
ReceiptOut = Annotated[dict[str, Any] | None, DocumentedAs(Receipt | None)]


class ReceiptWarning(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "field": "receipt.orderLines[0].unitInfo.unitPrice",
                    "code": "unit_price_mismatch",
                    "message": "unitPrice × quantity = 8000 does not match totalAmount + "
                    "discount = 10000",
                }
            ]
        }
    )

    field: str = Field(examples=["receipt.orderLines[0].unitInfo.unitPrice"])
    code: str = Field(
        description="Stable. Warnings never block a sale.\n\n"
        + "\n".join(f"- `{code}`: {meaning}" for code, meaning in WARNING_CODES.items())
    )
    message: str


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


class CreateCheckoutRequest(ApiRequest):
    amount: Amount
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
    receipt: ReceiptIn = Field(
        default=None,
        description="Vipps receipt: `orderLines` and `bottomLine` (Order Management schema). "
        "`bottomLine.posId` defaults to the till id, its currency to the checkout's.",
    )

    model_config = ConfigDict(
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


class AmountRequest(ApiRequest):
    model_config = _examples({"amount": 5000}, {})

    amount: int | None = Field(
        default=None,
        ge=1,
        le=MAX_AMOUNT,
        description="Minor units, a JSON integer; omit for everything that is left.",
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
    receipt: ReceiptOut = Field(description="As sent to Vipps (normalized); null without one.")
    warnings: list[ReceiptWarning]
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
    def of(cls, row: CheckoutRecord) -> CheckoutOut:
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
                if row.state is CheckoutState.AWAITING_POS_UPDATE
                else None,
            )
            if row.club_outcome
            else None
        )
        return cls(
            id=row.id,
            till_id=row.till_id,
            store_id=row.store_id,
            state=row.state.value,
            final=row.state.is_final,
            payment_sent=row.vipps_state is not None,
            amount=Money.model_validate({"value": row.amount_value, "currency": row.currency}),
            original_amount=row.original_amount_value,
            capture_mode=row.capture_mode.value,
            description=row.description,
            reference=row.reference,
            receipt=row.receipt or None,
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


class RegisterTillRequest(ApiRequest):
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


class UpdateTillRequest(ApiRequest):
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


class StoreRequest(ApiRequest):
    model_config = _examples(
        {
            "name": "Oslo City",
            "clubPolicy": "lookup",
            "memberPriceHold": True,
            "memberPriceHoldSeconds": 30,
            "displayLanguage": "nb",
        }
    )

    name: str | None = Field(default=None, max_length=200)
    club_policy: Literal["off", "lookup", "enroll"] | None = None
    member_price_hold: bool | None = None
    member_price_hold_seconds: int | None = Field(default=None, ge=1, le=300)
    display_language: Literal["nb", "da", "fi", "en", "auto"] | None = Field(
        default=None,
        description="Language of the customer display: nb (Norwegian), da (Danish), fi "
        "(Finnish), en (English), or auto (follow each display's browser, the default).",
    )


class StoreOut(ApiModel):
    model_config = _examples(
        {
            "storeId": "oslo-1",
            "name": "Oslo City",
            "clubPolicy": "lookup",
            "memberPriceHold": True,
            "memberPriceHoldSeconds": 30,
            "displayLanguage": "nb",
        }
    )

    store_id: str
    name: str
    club_policy: str
    member_price_hold: bool
    member_price_hold_seconds: int
    display_language: str | None = Field(
        description="nb, da, fi or en; null: each display follows its browser."
    )

    @classmethod
    def of(cls, row: Store) -> StoreOut:
        return cls(
            store_id=row.id,
            name=row.name,
            club_policy=row.club_policy,
            member_price_hold=row.member_price_hold,
            member_price_hold_seconds=row.member_price_hold_seconds,
            display_language=row.display_language,
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
