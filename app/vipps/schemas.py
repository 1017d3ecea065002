"""Typed bodies of the Vipps MobilePay APIs this service uses.

Platform APIs (ePayment, QR, Webhooks) speak camelCase; the models use snake_case names with
camelCase aliases and accept either on input. OAuth/OIDC (Login, access token) bodies are
snake_case on the wire and have no aliases.

Invariants:

* Request bodies are serialized with :func:`to_wire` — ``by_alias=True, exclude_none=True,
  mode="json"`` — so optional fields we leave empty are omitted, never sent as ``null``.
* Response models ignore fields they do not know: Vipps adds fields without a version bump
  (``captureGuaranteedUntil``, ``userDetails``, ...).
* Customer data (customer tokens, phone numbers, user-info claims) is held as :class:`SecretStr`
  or excluded from ``repr``, so printing or logging a model never shows it. Request secrets are
  revealed only when serialized to JSON for the wire (:data:`WireSecret`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    StrictInt,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

Currency = Literal["NOK", "DKK", "EUR"]
PaymentState = Literal["CREATED", "AUTHORIZED", "ABORTED", "EXPIRED", "TERMINATED"]
PaymentEventName = Literal[
    "CREATED", "ABORTED", "EXPIRED", "CANCELLED", "CAPTURED", "REFUNDED", "AUTHORIZED", "TERMINATED"
]
UserFlow = Literal["PUSH_MESSAGE", "NATIVE_REDIRECT", "WEB_REDIRECT", "QR"]
CustomerInteraction = Literal["CUSTOMER_PRESENT", "CUSTOMER_NOT_PRESENT"]
QuantityUnit = Literal["PCS", "KG", "KM", "MINUTE", "LITRE", "KWH"]
QrImageFormat = Literal["SVG", "PNG"]

# ePayment: reference ^[a-zA-Z0-9-]{8,50}$ (spec 1.4.1); newer guidance allows 64, 50 fits both.
REFERENCE_PATTERN = r"^[a-zA-Z0-9-]{8,50}$"
MSISDN_PATTERN = r"^\d{10,15}$"


def _reveal(secret: SecretStr) -> str:
    return secret.get_secret_value()


# Masked in repr/str and in model_dump(); the real value only in JSON for the wire.
WireSecret = Annotated[SecretStr, PlainSerializer(_reveal, return_type=str, when_used="json")]


def _lenient_number(value: Any) -> Any:
    """Vipps types many numbers as strings ("3600"); unparseable values become ``None``."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


LenientFloat = Annotated[float | None, BeforeValidator(_lenient_number)]


def to_wire(model: BaseModel) -> dict[str, Any]:
    """The JSON body for a request model: aliases, no ``None`` fields, secrets revealed."""
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


class VippsModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown response fields are ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


class VippsRequestModel(VippsModel):
    """A body we send: unknown fields are a programming error, not something to drop."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


# --------------------------------------------------------------------------------------------
# Common
# --------------------------------------------------------------------------------------------


class Amount(VippsModel):
    """Integer minor units: ``{"currency": "NOK", "value": 49900}`` is 499.00 NOK."""

    currency: Currency
    # Decimals are rejected by Vipps (error 4040), so no float is ever coerced into an amount.
    value: StrictInt = Field(ge=0, le=65_000_000)


# --------------------------------------------------------------------------------------------
# ePayment: create
# --------------------------------------------------------------------------------------------


class PaymentMethod(VippsRequestModel):
    type: Literal["WALLET"] = "WALLET"


class Customer(VippsRequestModel):
    """Exactly one of ``customerToken`` / ``phoneNumber`` / ``personalQr`` (ePayment ``oneOf``)."""

    customer_token: WireSecret | None = None
    phone_number: WireSecret | None = None
    personal_qr: WireSecret | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [
            v for v in (self.customer_token, self.phone_number, self.personal_qr) if v is not None
        ]
        if len(given) != 1 or not given[0].get_secret_value():
            raise ValueError("customer needs exactly one of customerToken, phoneNumber, personalQr")
        if self.phone_number is not None:
            number = self.phone_number.get_secret_value()
            if not (number.isdigit() and 10 <= len(number) <= 15):
                # The message must not echo the number.
                raise ValueError("phoneNumber must be 10-15 digits, country code first, no '+'")
        if (
            self.personal_qr is not None
            and not 5 <= len(self.personal_qr.get_secret_value()) <= 255
        ):
            raise ValueError("personalQr must be 5-255 characters")
        return self


class UnitInfo(VippsRequestModel):
    unit_price: int = Field(ge=0)
    quantity: str = Field(max_length=10, pattern=r"^\d+([\.]\d{1,8})?$")
    quantity_unit: QuantityUnit | None = None


class OrderLine(VippsRequestModel):
    """One receipt line (Order Management ``OrderLine``); amounts in minor units incl. tax.

    Tax: ``tax_rate`` in hundredths of a percent (2500 = 25 %) is preferred; the deprecated
    ``tax_percentage`` (0-100) is accepted for sales units on the older receipt schema. At least
    one is required (REFERENCE.md §7.1).
    """

    name: str = Field(min_length=1)
    id: str = Field(min_length=1)
    total_amount: int
    total_amount_excluding_tax: int
    total_tax_amount: int
    tax_rate: int | None = Field(default=None, ge=0, le=10_000)
    tax_percentage: int | None = Field(default=None, ge=0, le=100)
    unit_info: UnitInfo | None = None
    discount: int | None = Field(default=None, ge=0)
    product_url: str | None = None
    is_return: bool | None = None
    is_shipping: bool | None = None

    @model_validator(mode="after")
    def _has_tax(self) -> Self:
        if self.tax_rate is None and self.tax_percentage is None:
            raise ValueError("order line needs taxRate (preferred) or taxPercentage")
        return self


class PaymentSources(VippsRequestModel):
    gift_card: int | None = None
    card: int | None = None
    voucher: int | None = None
    cash: int | None = None


class Barcode(VippsRequestModel):
    format: Literal["EAN-13", "CODE 39", "CODE 128"]
    data: str


class BottomLine(VippsRequestModel):
    currency: Currency
    tip_amount: int | None = Field(default=None, ge=0)
    pos_id: str | None = None
    receipt_number: str | None = None
    payment_sources: PaymentSources | None = None
    barcode: Barcode | None = None


class Receipt(VippsRequestModel):
    order_lines: list[OrderLine] = Field(min_length=1)
    bottom_line: BottomLine


class CreatePaymentRequest(VippsRequestModel):
    """``POST /epayment/v1/payments`` body.

    Defaults fit a till: ``WALLET`` and ``CUSTOMER_PRESENT``, which in-store payments must send
    for compliance and risk handling (REFERENCE.md §7.1). ``customer`` is required with
    ``PUSH_MESSAGE``, ``return_url`` with ``WEB_REDIRECT``.
    """

    amount: Amount
    payment_method: PaymentMethod = PaymentMethod()
    customer: Customer | None = None
    customer_interaction: CustomerInteraction = "CUSTOMER_PRESENT"
    user_flow: UserFlow
    reference: str = Field(pattern=REFERENCE_PATTERN)
    return_url: str | None = None
    payment_description: str | None = Field(default=None, min_length=3, max_length=100)
    receipt: Receipt | None = None
    metadata: dict[str, str] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        # ePayment: at most 5 pairs, keys up to 100 characters, values up to 500.
        if value is None:
            return None
        if len(value) > 5:
            raise ValueError("metadata holds at most 5 pairs")
        for key, item in value.items():
            if not 1 <= len(key) <= 100 or len(item) > 500:
                raise ValueError("metadata keys are 1-100 characters, values at most 500")
        return value

    @model_validator(mode="after")
    def _flow_requirements(self) -> Self:
        if self.user_flow == "PUSH_MESSAGE" and self.customer is None:
            raise ValueError("userFlow PUSH_MESSAGE requires customer")
        if self.user_flow == "WEB_REDIRECT" and not self.return_url:
            raise ValueError("userFlow WEB_REDIRECT requires returnUrl")
        if self.receipt is not None and self.receipt.bottom_line.currency != self.amount.currency:
            raise ValueError("receipt currency differs from the payment amount's")
        return self


class CreatePaymentResponse(VippsModel):
    reference: str
    # Absent with PUSH_MESSAGE.
    redirect_url: str | None = None


# --------------------------------------------------------------------------------------------
# ePayment: read and modify
# --------------------------------------------------------------------------------------------


class Aggregate(VippsModel):
    """Money movements so far. There is no CAPTURED state: read ``captured_amount``."""

    authorized_amount: Amount
    cancelled_amount: Amount
    captured_amount: Amount
    refunded_amount: Amount


class PaymentMethodResponse(VippsModel):
    type: str
    card_bin: str | None = None


class ProfileResponse(VippsModel):
    sub: str | None = None


class PaymentDetails(VippsModel):
    """``GET /epayment/v1/payments/{reference}``. ``AUTHORIZED`` stays after capture/refund."""

    reference: str
    psp_reference: str
    state: PaymentState
    amount: Amount
    aggregate: Aggregate
    payment_method: PaymentMethodResponse | None = None
    profile: ProfileResponse | None = None
    redirect_url: str | None = None
    metadata: dict[str, str] | None = None
    capture_guaranteed_until: datetime | None = None


class PaymentEvent(VippsModel):
    """One entry of ``GET .../events``; check ``success`` before trusting the event."""

    reference: str
    psp_reference: str
    name: PaymentEventName
    amount: Amount
    timestamp: datetime
    idempotency_key: str | None = None
    success: bool


class WebhookEvent(PaymentEvent):
    """``epayments.payment.*.v1`` webhook payload: a :class:`PaymentEvent` plus ``msn``.

    A signal only: re-read the payment with GET before moving money (REFERENCE.md §7.9).
    """

    msn: str
    capture_guaranteed_until: datetime | None = None


class ModificationRequest(VippsRequestModel):
    """Capture and refund body."""

    modification_amount: Amount


class CancelRequest(VippsRequestModel):
    """Cancel body; only sent when ``cancelTransactionOnly`` is wanted (REFERENCE.md §7.6)."""

    cancel_transaction_only: bool


class ModificationResponse(VippsModel):
    """Capture/cancel/refund answer (labelled application/problem+json by the spec)."""

    amount: Amount
    state: PaymentState
    aggregate: Aggregate
    psp_reference: str
    reference: str


class ForceApproveRequest(VippsRequestModel):
    customer: Customer


# --------------------------------------------------------------------------------------------
# QR
# --------------------------------------------------------------------------------------------


class MerchantCallbackQrRequest(VippsRequestModel):
    """``PUT /qr/v1/merchant-callback/{id}``. ``category`` postdates the repo spec (May 2024)."""

    location_description: str = Field(min_length=1, max_length=36)
    category: str | None = None


class MerchantCallbackQr(VippsModel):
    """A callback QR. Fetch ``qr_image_url`` again rather than storing it: Vipps rotates the
    signing keys behind it (April 2024)."""

    merchant_qr_id: str
    merchant_serial_number: str | None = None
    location_description: str | None = None
    qr_image_url: str | None = None
    qr_content: str | None = None


def _msisdn_only() -> list[Literal["MSISDN"]]:
    return ["MSISDN"]


class CustomerExchangeRequest(VippsRequestModel):
    customer: Customer
    requested_data: list[Literal["MSISDN"]] = Field(default_factory=_msisdn_only)


class CustomerExchangeResult(VippsModel):
    """``POST /qr/v1/exchange/customer``: the customer's phone number, masked when printed."""

    msisdn: SecretStr
    timestamp: int | None = None


class UserCheckedIn(VippsModel):
    """``user.checked-in.v1`` webhook payload: a customer scanned a merchant callback QR.

    ``customer_token`` is valid for 15 minutes from the scan. The MSN arrives as ``msn``; 2023
    docs called it ``merchantSerialNumber`` and both are accepted. ``initiatedAt`` has up to
    seven fractional digits; the seventh is dropped (microsecond precision).
    """

    customer_token: SecretStr
    merchant_qr_id: str
    msn: str = Field(validation_alias=AliasChoices("msn", "merchantSerialNumber"))
    initiated_at: datetime


# --------------------------------------------------------------------------------------------
# Webhooks
# --------------------------------------------------------------------------------------------


class WebhookRegistrationRequest(VippsRequestModel):
    url: str
    events: list[str] = Field(min_length=1)


class WebhookRegistration(VippsModel):
    """``201`` of a registration. ``secret`` signs every delivery: store it encrypted."""

    id: str
    secret: SecretStr


class Webhook(VippsModel):
    id: str
    url: str
    events: list[str]


class WebhookList(VippsModel):
    webhooks: list[Webhook]


# --------------------------------------------------------------------------------------------
# Access token and Login (snake_case on the wire)
# --------------------------------------------------------------------------------------------


class OAuthModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class AccessTokenResponse(OAuthModel):
    """``POST /accesstoken/get``. The spec types every number as a string: parsed leniently."""

    access_token: SecretStr
    token_type: str | None = None
    expires_in: LenientFloat = None
    ext_expires_in: LenientFloat = None
    expires_on: LenientFloat = None
    not_before: LenientFloat = None
    resource: str | None = None


class OidcConfiguration(OAuthModel):
    issuer: str
    token_endpoint: str
    jwks_uri: str
    authorization_endpoint: str | None = None
    userinfo_endpoint: str | None = None
    backchannel_authentication_endpoint: str | None = None
    scopes_supported: list[str] = Field(default_factory=list)
    grant_types_supported: list[str] = Field(default_factory=list)
    token_endpoint_auth_methods_supported: list[str] = Field(default_factory=list)


class CibaStart(OAuthModel):
    """Backchannel authentication started. Poll no more often than every ``interval`` s."""

    auth_req_id: str
    expires_in: int
    # CIBA core §7.3: interval is optional, 5 seconds when absent.
    interval: int = 5


class CibaTokens(OAuthModel):
    access_token: SecretStr
    token_type: str | None = None
    expires_in: LenientFloat = None
    id_token: SecretStr | None = None
    refresh_token: SecretStr | None = None
    scope: str | None = None


class UserInfo(OAuthModel):
    """Consented claims. ``sub`` is stable per sales unit: the loyalty id. Personal data is
    masked or kept out of ``repr``."""

    sub: str
    phone_number: SecretStr | None = None
    name: str | None = Field(default=None, repr=False)
    given_name: str | None = Field(default=None, repr=False)
    family_name: str | None = Field(default=None, repr=False)
    email: str | None = Field(default=None, repr=False)
    email_verified: bool | None = None
    birthdate: str | None = Field(default=None, repr=False)
    address: dict[str, Any] | None = Field(default=None, repr=False)
