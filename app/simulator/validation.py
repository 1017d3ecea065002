"""Field rules of the ePayment create request, written out the way Vipps enforces them.

Each rule cites REFERENCE.md (§1 amounts, §7.1 fields). Schema-level problems answer 400 with the
offending field in ``extraDetails``; business rules answer 400 with an ``ErrorCode``.
The functions are pure: they read the parsed body and the sales unit, never engine state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from app.simulator.config import SalesUnit
from app.simulator.problems import SimError, epayment_problem

REFERENCE_RE = re.compile(r"^[a-zA-Z0-9-]{8,50}$")
MSN_RE = re.compile(r"^[0-9]{4,6}$")
MSISDN_RE = re.compile(r"^\d{10,15}$")
CURRENCIES = ("NOK", "DKK", "EUR")
MAX_AMOUNT = 65_000_000
# Smallest payment per currency: NOK 1.00, DKK 0.01, EUR 0.01 (REFERENCE.md §1, code 6010).
MINIMUM_AMOUNT = {"NOK": 100, "DKK": 1, "EUR": 1}
USER_FLOWS = ("PUSH_MESSAGE", "NATIVE_REDIRECT", "WEB_REDIRECT", "QR")
CUSTOMER_FORMS = ("phoneNumber", "personalQr", "customerToken")
MAX_IDEMPOTENCY_KEY = 50
CUSTOM_SCHEME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def invalid(field: str, reason: str) -> SimError:
    return epayment_problem(400, f"Invalid request: {reason}", fields=[(field, reason)])


def business(code: str, detail: str, status: int = 400, *, transient: bool = False) -> SimError:
    return epayment_problem(status, detail, code=code, transient=transient)


def parse_amount(raw: Any, field: str) -> tuple[str, int]:
    """An ``Amount`` object: integer minor units 0..65 000 000 and a known currency."""
    if not isinstance(raw, dict):
        raise invalid(field, f"{field} is required and must be an object")
    currency = raw.get("currency")
    value = raw.get("value")
    if currency not in CURRENCIES:
        raise invalid(f"{field}.currency", "currency must be one of NOK, DKK, EUR")
    if isinstance(value, float):
        # Decimals are rejected with 4040 (REFERENCE.md §1).
        raise epayment_problem(
            400,
            "Amounts are integers in minor units",
            code="4040",
            fields=[(f"{field}.value", "decimal")],
        )
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid(f"{field}.value", "value is required and must be an integer")
    if not 0 <= value <= MAX_AMOUNT:
        raise invalid(f"{field}.value", f"value must be between 0 and {MAX_AMOUNT}")
    return currency, value


@dataclass(frozen=True)
class CreateRequest:
    reference: str
    currency: str
    value: int
    user_flow: str
    customer_form: str | None
    customer_value: str | None
    return_url: str | None
    profile_scope: str | None
    metadata: dict[str, str] | None


def _is_https_or_custom(url: str) -> bool:
    return url.startswith("https://") or (
        CUSTOM_SCHEME_RE.match(url) is not None and not url.startswith("http://")
    )


def parse_create(body: Any, unit: SalesUnit) -> CreateRequest:
    """Validate a ``CreatePaymentRequest``; raise the first problem as Vipps would report it."""
    if not isinstance(body, dict):
        raise invalid("body", "the request body must be a JSON object")
    currency, value = parse_amount(body.get("amount"), "amount")

    method = body.get("paymentMethod")
    if not isinstance(method, dict) or method.get("type") not in ("WALLET", "CARD"):
        raise invalid("paymentMethod.type", "paymentMethod.type must be WALLET or CARD")

    reference = body.get("reference")
    if not isinstance(reference, str) or not REFERENCE_RE.match(reference):
        raise invalid("reference", "reference must match ^[a-zA-Z0-9-]{8,50}$")

    user_flow = body.get("userFlow")
    if user_flow not in USER_FLOWS:
        raise invalid("userFlow", "userFlow must be one of " + ", ".join(USER_FLOWS))
    if method["type"] == "CARD" and user_flow != "WEB_REDIRECT":
        raise invalid("paymentMethod.type", "CARD can only be used with WEB_REDIRECT")

    customer_form: str | None = None
    customer_value: str | None = None
    customer = body.get("customer")
    if customer is not None:
        if not isinstance(customer, dict):
            raise invalid("customer", "customer must be an object")
        # Exactly one of the three forms; more than one is an error (spec `Customer` oneOf).
        present = [name for name in CUSTOMER_FORMS if customer.get(name) is not None]
        if len(present) != 1 or len(customer) != 1:
            raise invalid(
                "customer",
                "customer must have exactly one of phoneNumber, personalQr, customerToken",
            )
        customer_form = present[0]
        raw = customer[customer_form]
        if not isinstance(raw, str):
            raise invalid(f"customer.{customer_form}", "must be a string")
        if customer_form == "phoneNumber" and not MSISDN_RE.match(raw):
            raise invalid("customer.phoneNumber", "phoneNumber must match ^\\d{10,15}$")
        if customer_form == "personalQr" and not 5 <= len(raw) <= 255:
            raise invalid("customer.personalQr", "personalQr must be 5 to 255 characters")
        if customer_form == "customerToken" and not raw:
            raise invalid("customer.customerToken", "customerToken must not be empty")
        customer_value = raw

    if user_flow == "PUSH_MESSAGE" and customer is None:
        raise invalid("customer", "customer is required when userFlow is PUSH_MESSAGE")
    return_url = body.get("returnUrl")
    if return_url is not None and (
        not isinstance(return_url, str) or not _is_https_or_custom(return_url)
    ):
        raise invalid("returnUrl", "returnUrl must use https:// or a custom URL scheme")
    if user_flow == "WEB_REDIRECT" and not return_url:
        raise invalid("returnUrl", "returnUrl is required when userFlow is WEB_REDIRECT")

    interaction = body.get("customerInteraction", "CUSTOMER_NOT_PRESENT")
    if interaction not in ("CUSTOMER_PRESENT", "CUSTOMER_NOT_PRESENT"):
        raise invalid("customerInteraction", "must be CUSTOMER_PRESENT or CUSTOMER_NOT_PRESENT")

    description = body.get("paymentDescription")
    if description is not None and (
        not isinstance(description, str) or not 3 <= len(description) <= 100
    ):
        raise invalid("paymentDescription", "paymentDescription must be 3 to 100 characters")

    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict) or len(metadata) > 5:
            raise invalid("metadata", "metadata is at most 5 key-value pairs")
        for key, item in metadata.items():
            if len(key) > 100 or not isinstance(item, str) or len(item) > 500:
                raise invalid(
                    f"metadata.{key}", "keys up to 100 and string values up to 500 characters"
                )

    receipt = body.get("receipt")
    if receipt is not None:
        _check_receipt(receipt)
    if body.get("qrFormat") is not None and user_flow != "QR":
        raise invalid("qrFormat", "qrFormat is only allowed with userFlow QR")
    if body.get("expiresAt") is not None:
        # Long-living payments need sales-unit approval (REFERENCE.md §7.1, error 5050).
        raise business(
            "5050", "Long-living payments (expiresAt) are not enabled for this sales unit"
        )

    profile = body.get("profile")
    scope: str | None = None
    if profile is not None:
        if not isinstance(profile, dict) or not isinstance(profile.get("scope", ""), str):
            raise invalid("profile.scope", "profile.scope must be a space-separated string")
        scope = profile.get("scope") or None

    # Business rules after the schema (REFERENCE.md §1 and §7.1).
    if value < MINIMUM_AMOUNT[currency]:
        raise business(
            "6010", f"The amount is below the minimum of {MINIMUM_AMOUNT[currency]} for {currency}"
        )
    if currency != unit.currency:
        raise business(
            "5040",
            f"The currency {currency} does not match the sales unit's market ({unit.currency})",
        )
    if user_flow == "PUSH_MESSAGE" and not unit.push_message_allowed:
        raise business("5080", "PUSH_MESSAGE not allowed for this sales unit")

    return CreateRequest(
        reference=reference,
        currency=currency,
        value=value,
        user_flow=user_flow,
        customer_form=customer_form,
        customer_value=customer_value,
        return_url=return_url,
        profile_scope=scope,
        metadata=metadata,
    )


def _check_receipt(receipt: Any) -> None:
    """The Order Management ``Receipt`` essentials (REFERENCE.md §7.1, ``receipt``)."""
    if not isinstance(receipt, dict):
        raise invalid("receipt", "receipt must be an object")
    lines = receipt.get("orderLines")
    if not isinstance(lines, list) or not lines:
        raise invalid("receipt.orderLines", "at least one order line is required")
    for index, line in enumerate(lines):
        where = f"receipt.orderLines[{index}]"
        if not isinstance(line, dict):
            raise invalid(where, "an order line must be an object")
        for name in ("name", "id"):
            if not isinstance(line.get(name), str) or not line[name]:
                raise invalid(f"{where}.{name}", f"{name} is required")
        for name in ("totalAmount", "totalAmountExcludingTax", "totalTaxAmount"):
            item = line.get(name)
            if not isinstance(item, int) or isinstance(item, bool):
                raise invalid(f"{where}.{name}", f"{name} is required and must be an integer")
        if line.get("taxRate") is None and line.get("taxPercentage") is None:
            raise invalid(f"{where}.taxRate", "taxRate (or the older taxPercentage) is required")
        rate = line.get("taxRate")
        if rate is not None and (not isinstance(rate, int) or not 0 <= rate <= 10000):
            raise invalid(f"{where}.taxRate", "taxRate is an integer 0..10000")
    bottom = receipt.get("bottomLine")
    if not isinstance(bottom, dict) or bottom.get("currency") not in CURRENCIES:
        raise invalid("receipt.bottomLine.currency", "bottomLine.currency is required")


def parse_modification(body: Any, currency: str) -> int:
    """``modificationAmount`` of capture and refund: positive, in the payment's currency."""
    if not isinstance(body, dict):
        raise invalid("modificationAmount", "modificationAmount is required")
    mod_currency, value = parse_amount(body.get("modificationAmount"), "modificationAmount")
    if mod_currency != currency:
        raise invalid("modificationAmount.currency", f"currency must be the payment's ({currency})")
    if value <= 0:
        raise invalid("modificationAmount.value", "value must be greater than 0")
    return value
