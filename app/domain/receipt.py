"""Checks a till's checkout money and receipt before anything reaches Vipps MobilePay.

Two kinds of findings (DESIGN.md §4):

* **errors** -- the request is certainly wrong (outside the ePayment / Order Management schema
  limits, or its sums do not add up); the checkout is refused and nothing goes to Vipps.
* **warnings** -- only suspicious (a unit price that does not explain the line total, a tax rate
  that does not explain the tax); the checkout proceeds and the till is told.

Every finding names its field with a dotted path such as ``receipt.orderLines[2].totalTaxAmount``
and carries a stable machine code (the ``*_CODE`` names below list them all).

Invariants:

* :func:`check_checkout` is total: any JSON-shaped input (wrong types, ``bool`` where an integer
  belongs, nested junk) yields findings, never an exception. ``bool`` is not an integer here.
* Unknown keys are ignored by the check and dropped by :func:`normalize_receipt`.
* Pure and stdlib only; quantities are computed with :class:`~decimal.Decimal`, never ``float``.

Rules this module settles where Vipps's documents do not (REFERENCE.md §7.1, §10):

* **Sum rule.** ``amount`` must equal the sum of the line ``totalAmount`` values, a line with
  ``isReturn: true`` counting negative, plus ``bottomLine.tipAmount``: the customer pays the tip
  together with the goods, so the tip is part of the payment amount. Whether Vipps itself demands
  this equality is unverified; keeping them equal is always safe.
* **Tax.** Each line needs ``taxRate`` (basis points, preferred) or the deprecated
  ``taxPercentage``. Both together are accepted when they agree
  (``taxRate == taxPercentage * 100``) and refused when they disagree; normalization then sends
  only ``taxRate``. ``taxPercentage`` alone is kept for sales units on the older receipt schema
  (DESIGN.md §7), with a warning.
* **Lengths Vipps does not document** (chosen generous but bounded): ``name``, ``id``,
  ``productUrl`` and ``barcode.data`` at most 2048 characters; ``posId`` and ``receiptNumber``
  at most 255; at most 1000 order lines. ``name`` and ``id`` must not be blank.
* **Line amounts** are signed 64-bit integers (the schema's ``int64``, no minimum); a negative
  one is only a warning (returns should use ``isReturn``, discounts ``discount``).
* **unitInfo.unitPrice** is required whenever ``unitInfo`` is given (the schema lists it as
  required), and must be an integer ``>= 0``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Context, Decimal
from typing import Any, Final, TypeGuard

# Currencies and per-currency minimum payment amounts in minor units (REFERENCE.md §1).
MIN_AMOUNT: Final[Mapping[str, int]] = {"NOK": 100, "DKK": 1, "EUR": 1}
SUPPORTED_CURRENCIES: Final = frozenset(MIN_AMOUNT)
MAX_AMOUNT: Final = 65_000_000

DESCRIPTION_MIN_LENGTH: Final = 3
DESCRIPTION_MAX_LENGTH: Final = 100
TEXT_MAX_LENGTH: Final = 2048  # name, id, productUrl, barcode.data
SHORT_TEXT_MAX_LENGTH: Final = 255  # posId, receiptNumber
MAX_ORDER_LINES: Final = 1000
INT64_MAX: Final = 2**63 - 1
TAX_RATE_MAX: Final = 10_000
TAX_PERCENTAGE_MAX: Final = 100
QUANTITY_MAX_LENGTH: Final = 10
QUANTITY_UNITS: Final = frozenset({"PCS", "KG", "KM", "MINUTE", "LITRE", "KWH"})
BARCODE_FORMATS: Final = frozenset({"EAN-13", "CODE 39", "CODE 128"})
PAYMENT_SOURCES: Final = ("giftCard", "card", "voucher", "cash")
# Exact for any int64 × 10-character quantity (the default context keeps only 28 digits).
_EXACT: Final = Context(prec=60)
# Tolerance for rounding when checking tax and unit prices, in minor units.
ROUNDING_TOLERANCE: Final = Decimal(1)

# ``\d`` in Python also matches non-ASCII digits; Vipps's pattern means 0-9.
_QUANTITY = re.compile(r"[0-9]+(\.[0-9]{1,8})?")

# Error codes.
INVALID_TYPE_CODE: Final = "invalid_type"
REQUIRED_CODE: Final = "required"
BLANK_CODE: Final = "blank"
TOO_SHORT_CODE: Final = "too_short"
TOO_LONG_CODE: Final = "too_long"
OUT_OF_RANGE_CODE: Final = "out_of_range"
AMOUNT_TOO_SMALL_CODE: Final = "amount_too_small"
AMOUNT_TOO_LARGE_CODE: Final = "amount_too_large"
UNSUPPORTED_CURRENCY_CODE: Final = "unsupported_currency"
CURRENCY_MISMATCH_CODE: Final = "currency_mismatch"
NO_ORDER_LINES_CODE: Final = "no_order_lines"
TOO_MANY_ORDER_LINES_CODE: Final = "too_many_order_lines"
LINE_TOTAL_MISMATCH_CODE: Final = "line_total_mismatch"
TAX_MISSING_CODE: Final = "tax_missing"
TAX_CONFLICT_CODE: Final = "tax_conflict"
INVALID_QUANTITY_CODE: Final = "invalid_quantity"
UNSUPPORTED_VALUE_CODE: Final = "unsupported_value"
RECEIPT_TOTAL_MISMATCH_CODE: Final = "receipt_total_mismatch"

# Warning codes.
UNIT_PRICE_MISMATCH_CODE: Final = "unit_price_mismatch"
TAX_RATE_MISMATCH_CODE: Final = "tax_rate_mismatch"
TAX_PERCENTAGE_DEPRECATED_CODE: Final = "tax_percentage_deprecated"
NEGATIVE_LINE_AMOUNT_CODE: Final = "negative_line_amount"
DEPRECATED_FIELD_DROPPED_CODE: Final = "deprecated_field_dropped"

ERROR_CODES: Final = frozenset(
    {
        INVALID_TYPE_CODE,
        REQUIRED_CODE,
        BLANK_CODE,
        TOO_SHORT_CODE,
        TOO_LONG_CODE,
        OUT_OF_RANGE_CODE,
        AMOUNT_TOO_SMALL_CODE,
        AMOUNT_TOO_LARGE_CODE,
        UNSUPPORTED_CURRENCY_CODE,
        CURRENCY_MISMATCH_CODE,
        NO_ORDER_LINES_CODE,
        TOO_MANY_ORDER_LINES_CODE,
        LINE_TOTAL_MISMATCH_CODE,
        TAX_MISSING_CODE,
        TAX_CONFLICT_CODE,
        INVALID_QUANTITY_CODE,
        UNSUPPORTED_VALUE_CODE,
        RECEIPT_TOTAL_MISMATCH_CODE,
    }
)
WARNING_CODES: Final = frozenset(
    {
        UNIT_PRICE_MISMATCH_CODE,
        TAX_RATE_MISMATCH_CODE,
        TAX_PERCENTAGE_DEPRECATED_CODE,
        NEGATIVE_LINE_AMOUNT_CODE,
        DEPRECATED_FIELD_DROPPED_CODE,
    }
)

# Keys kept by normalize_receipt, per object (Order Management ``latest`` schema, minus the
# deprecated bottomLine fields, which Vipps says lead to a faulty calculation of sums and tax).
_ORDER_LINE_KEYS: Final = (
    "name",
    "id",
    "totalAmount",
    "totalAmountExcludingTax",
    "totalTaxAmount",
    "taxRate",
    "taxPercentage",
    "unitInfo",
    "discount",
    "productUrl",
    "isReturn",
    "isShipping",
)
_UNIT_INFO_KEYS: Final = ("unitPrice", "quantity", "quantityUnit")
_BOTTOM_LINE_KEYS: Final = (
    "currency",
    "tipAmount",
    "posId",
    "receiptNumber",
    "paymentSources",
    "barcode",
)
_BARCODE_KEYS: Final = ("format", "data")
_DEPRECATED_BOTTOM_LINE_KEYS: Final = (
    "totalAmount",
    "totalTax",
    "totalDiscount",
    "shippingAmount",
    "shippingInfo",
    "terminalId",
    "giftCardAmount",
)


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One finding: ``field`` is a dotted path (``receipt.orderLines[0].name``), ``code`` stable."""

    field: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ReceiptCheck:
    """The outcome of :func:`check_checkout`. Errors block the checkout; warnings never do."""

    errors: tuple[FieldProblem, ...]
    warnings: tuple[FieldProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.errors


def _is_int(value: object) -> TypeGuard[int]:
    """JSON integers only: ``True`` is not 1 here."""
    return isinstance(value, int) and not isinstance(value, bool)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, Sequence):
        return "array"
    return type(value).__name__


class _Checker:
    """Collects findings; each ``int_``/``str_``/... helper returns the value only if usable."""

    def __init__(self) -> None:
        self.errors: list[FieldProblem] = []
        self.warnings: list[FieldProblem] = []

    def error(self, field: str, code: str, message: str) -> None:
        self.errors.append(FieldProblem(field, code, message))

    def warn(self, field: str, code: str, message: str) -> None:
        self.warnings.append(FieldProblem(field, code, message))

    def _wrong_type(self, field: str, expected: str, value: object) -> None:
        self.error(field, INVALID_TYPE_CODE, f"must be {expected}, not {_type_name(value)}")

    def _missing(self, field: str) -> None:
        self.error(field, REQUIRED_CODE, "is required")

    def int_(
        self,
        field: str,
        value: object,
        *,
        required: bool,
        minimum: int = -INT64_MAX,
        maximum: int = INT64_MAX,
    ) -> int | None:
        if value is None:
            if required:
                self._missing(field)
            return None
        if not _is_int(value):
            self._wrong_type(field, "an integer (minor units)", value)
            return None
        if not minimum <= value <= maximum:
            self.error(field, OUT_OF_RANGE_CODE, f"must be between {minimum} and {maximum}")
            return None
        return value

    def str_(
        self,
        field: str,
        value: object,
        *,
        required: bool,
        max_length: int,
        not_blank: bool = False,
    ) -> str | None:
        if value is None:
            if required:
                self._missing(field)
            return None
        if not isinstance(value, str):
            self._wrong_type(field, "a string", value)
            return None
        if not_blank and not value.strip():
            self.error(field, BLANK_CODE, "must not be empty or blank")
            return None
        if len(value) > max_length:
            self.error(field, TOO_LONG_CODE, f"must be at most {max_length} characters")
            return None
        return value

    def bool_(self, field: str, value: object) -> bool | None:
        if value is None:
            return None
        if not isinstance(value, bool):
            self._wrong_type(field, "a boolean", value)
            return None
        return value

    def object_(self, field: str, value: object, *, required: bool) -> Mapping[str, Any] | None:
        if value is None:
            if required:  # pragma: no cover (only the receipt is required; checked when given)
                self._missing(field)
            return None
        if not isinstance(value, Mapping):
            self._wrong_type(field, "an object", value)
            return None
        return value

    def enum_(
        self, field: str, value: object, allowed: frozenset[str], *, required: bool
    ) -> str | None:
        if value is None:
            if required:
                self._missing(field)
            return None
        if not isinstance(value, str):
            self._wrong_type(field, "a string", value)
            return None
        if value not in allowed:
            self.error(
                field, UNSUPPORTED_VALUE_CODE, f"must be one of {', '.join(sorted(allowed))}"
            )
            return None
        return value


def _check_amount(c: _Checker, amount: object, currency: object) -> tuple[int | None, str | None]:
    known_currency: str | None = None
    if not isinstance(currency, str):
        c.error("currency", INVALID_TYPE_CODE, f"must be a string, not {_type_name(currency)}")
    elif currency not in SUPPORTED_CURRENCIES:
        c.error(
            "currency",
            UNSUPPORTED_CURRENCY_CODE,
            f"must be one of {', '.join(sorted(SUPPORTED_CURRENCIES))}",
        )
    else:
        known_currency = currency

    if not _is_int(amount):
        c.error("amount", INVALID_TYPE_CODE, "must be an integer in minor units (øre or cents)")
        return None, known_currency
    if amount > MAX_AMOUNT:
        c.error("amount", AMOUNT_TOO_LARGE_CODE, f"must be at most {MAX_AMOUNT} minor units")
        return None, known_currency
    minimum = MIN_AMOUNT[known_currency] if known_currency else 1
    if amount < minimum:
        unit = f"minor units of {known_currency}" if known_currency else "minor units"
        c.error("amount", AMOUNT_TOO_SMALL_CODE, f"must be at least {minimum} {unit}")
        return None, known_currency
    return amount, known_currency


def _check_description(c: _Checker, description: object) -> None:
    if description is None:
        return
    if not isinstance(description, str):
        c.error(
            "description", INVALID_TYPE_CODE, f"must be a string, not {_type_name(description)}"
        )
    elif len(description) < DESCRIPTION_MIN_LENGTH:
        c.error(
            "description", TOO_SHORT_CODE, f"must be at least {DESCRIPTION_MIN_LENGTH} characters"
        )
    elif len(description) > DESCRIPTION_MAX_LENGTH:
        c.error(
            "description", TOO_LONG_CODE, f"must be at most {DESCRIPTION_MAX_LENGTH} characters"
        )


def _check_unit_info(
    c: _Checker, path: str, unit_info: Mapping[str, Any]
) -> tuple[int, Decimal] | None:
    """Checks ``unitInfo``; returns (unitPrice, quantity) when both are usable."""
    unit_price = c.int_(f"{path}.unitPrice", unit_info.get("unitPrice"), required=True, minimum=0)
    quantity: Decimal | None = None
    raw = unit_info.get("quantity")
    if raw is None:
        c.error(f"{path}.quantity", REQUIRED_CODE, "is required")
    elif not isinstance(raw, str):
        c.error(
            f"{path}.quantity",
            INVALID_TYPE_CODE,
            f'must be a string such as "2" or "0.822", not {_type_name(raw)}',
        )
    elif len(raw) > QUANTITY_MAX_LENGTH or not _QUANTITY.fullmatch(raw):
        c.error(
            f"{path}.quantity",
            INVALID_QUANTITY_CODE,
            f"must be digits with at most 8 decimals after a '.', "
            f"at most {QUANTITY_MAX_LENGTH} characters",
        )
    else:
        quantity = Decimal(raw)
    c.enum_(f"{path}.quantityUnit", unit_info.get("quantityUnit"), QUANTITY_UNITS, required=False)
    if unit_price is None or quantity is None:
        return None
    return unit_price, quantity


def _check_line(c: _Checker, path: str, line: Mapping[str, Any]) -> int | None:
    """Checks one order line; returns its signed contribution to the total when usable."""
    c.str_(
        f"{path}.name", line.get("name"), required=True, max_length=TEXT_MAX_LENGTH, not_blank=True
    )
    c.str_(f"{path}.id", line.get("id"), required=True, max_length=TEXT_MAX_LENGTH, not_blank=True)
    total = c.int_(f"{path}.totalAmount", line.get("totalAmount"), required=True)
    excluding = c.int_(
        f"{path}.totalAmountExcludingTax", line.get("totalAmountExcludingTax"), required=True
    )
    tax = c.int_(f"{path}.totalTaxAmount", line.get("totalTaxAmount"), required=True)
    raw_discount = line.get("discount")
    discount = c.int_(f"{path}.discount", raw_discount, required=False, minimum=0)
    c.str_(f"{path}.productUrl", line.get("productUrl"), required=False, max_length=TEXT_MAX_LENGTH)
    raw_is_return = line.get("isReturn")
    is_return = c.bool_(f"{path}.isReturn", raw_is_return)
    c.bool_(f"{path}.isShipping", line.get("isShipping"))

    for key, value in (
        ("totalAmount", total),
        ("totalAmountExcludingTax", excluding),
        ("totalTaxAmount", tax),
    ):
        if value is not None and value < 0:
            c.warn(
                f"{path}.{key}",
                NEGATIVE_LINE_AMOUNT_CODE,
                "is negative; mark returned goods with isReturn and use discount for discounts",
            )

    if total is not None and excluding is not None and tax is not None and total != excluding + tax:
        c.error(
            f"{path}.totalAmount",
            LINE_TOTAL_MISMATCH_CODE,
            f"{total} must equal totalAmountExcludingTax + totalTaxAmount "
            f"({excluding} + {tax} = {excluding + tax})",
        )

    rate = _check_tax(c, path, line)
    if rate is not None and excluding is not None and tax is not None:
        expected = _EXACT.divide(_EXACT.multiply(Decimal(excluding), rate), Decimal(10_000))
        if _EXACT.subtract(Decimal(tax), expected).copy_abs() > ROUNDING_TOLERANCE:
            c.warn(
                f"{path}.totalTaxAmount",
                TAX_RATE_MISMATCH_CODE,
                f"{tax} does not match {rate / 100}% of totalAmountExcludingTax {excluding} "
                f"(expected about {expected.quantize(Decimal('0.01'))})",
            )

    unit_info = c.object_(f"{path}.unitInfo", line.get("unitInfo"), required=False)
    if unit_info is not None:
        priced = _check_unit_info(c, f"{path}.unitInfo", unit_info)
        discount_usable = raw_discount is None or discount is not None
        if priced is not None and total is not None and discount_usable:
            unit_price, quantity = priced
            gross = _EXACT.multiply(Decimal(unit_price), quantity)
            before_discount = total + (discount or 0)
            if _EXACT.subtract(gross, Decimal(before_discount)).copy_abs() >= ROUNDING_TOLERANCE:
                c.warn(
                    f"{path}.unitInfo.unitPrice",
                    UNIT_PRICE_MISMATCH_CODE,
                    f"unitPrice × quantity = {gross.normalize():f} does not match "
                    f"totalAmount + discount = {before_discount}",
                )

    if total is None or (raw_is_return is not None and is_return is None):
        return None  # already reported; a sum from unusable parts would only add noise
    return -total if is_return else total


def _check_tax(c: _Checker, path: str, line: Mapping[str, Any]) -> Decimal | None:
    """Checks taxRate/taxPercentage; returns the rate in basis points when usable."""
    raw_rate = line.get("taxRate")
    raw_percentage = line.get("taxPercentage")
    if raw_rate is None and raw_percentage is None:
        c.error(
            f"{path}.taxRate",
            TAX_MISSING_CODE,
            "taxRate (basis points, 2500 = 25 %) or the older taxPercentage is required",
        )
        return None
    rate = c.int_(f"{path}.taxRate", raw_rate, required=False, minimum=0, maximum=TAX_RATE_MAX)
    percentage = c.int_(
        f"{path}.taxPercentage",
        raw_percentage,
        required=False,
        minimum=0,
        maximum=TAX_PERCENTAGE_MAX,
    )
    if raw_percentage is not None:
        c.warn(
            f"{path}.taxPercentage",
            TAX_PERCENTAGE_DEPRECATED_CODE,
            "is deprecated; send taxRate in basis points (2500 = 25 %)",
        )
    if rate is not None and percentage is not None and rate != percentage * 100:
        c.error(
            f"{path}.taxRate",
            TAX_CONFLICT_CODE,
            f"taxRate {rate} and taxPercentage {percentage} disagree; send taxRate only",
        )
        return None
    if rate is not None:
        return Decimal(rate)
    if percentage is not None and raw_rate is None:
        return Decimal(percentage * 100)
    return None


def _check_bottom_line(
    c: _Checker, bottom: Mapping[str, Any], currency: str | None
) -> tuple[bool, int]:
    """Checks ``bottomLine``; returns (tip usable, tip amount)."""
    path = "receipt.bottomLine"
    receipt_currency = bottom.get("currency")
    if receipt_currency is not None:
        known = c.enum_(f"{path}.currency", receipt_currency, SUPPORTED_CURRENCIES, required=False)
        if known is not None and currency is not None and known != currency:
            c.error(
                f"{path}.currency",
                CURRENCY_MISMATCH_CODE,
                f"{known} differs from the checkout currency {currency}",
            )
    raw_tip = bottom.get("tipAmount")
    tip = c.int_(f"{path}.tipAmount", raw_tip, required=False, minimum=0, maximum=MAX_AMOUNT)
    c.str_(f"{path}.posId", bottom.get("posId"), required=False, max_length=SHORT_TEXT_MAX_LENGTH)
    c.str_(
        f"{path}.receiptNumber",
        bottom.get("receiptNumber"),
        required=False,
        max_length=SHORT_TEXT_MAX_LENGTH,
    )
    sources = c.object_(f"{path}.paymentSources", bottom.get("paymentSources"), required=False)
    if sources is not None:
        for key in PAYMENT_SOURCES:
            c.int_(f"{path}.paymentSources.{key}", sources.get(key), required=False, minimum=0)
    barcode = c.object_(f"{path}.barcode", bottom.get("barcode"), required=False)
    if barcode is not None:
        c.enum_(f"{path}.barcode.format", barcode.get("format"), BARCODE_FORMATS, required=True)
        c.str_(
            f"{path}.barcode.data", barcode.get("data"), required=True, max_length=TEXT_MAX_LENGTH
        )
    for key in _DEPRECATED_BOTTOM_LINE_KEYS:
        if bottom.get(key) is not None:
            c.warn(
                f"{path}.{key}",
                DEPRECATED_FIELD_DROPPED_CODE,
                "is deprecated and is not sent to Vipps; totals come from the order lines",
            )
    usable = raw_tip is None or tip is not None
    return usable, tip or 0


def _check_receipt(
    c: _Checker, receipt: Mapping[str, Any], amount: int | None, currency: str | None
) -> None:
    lines = receipt.get("orderLines")
    contributions: list[int | None] = []
    if lines is None:
        c.error("receipt.orderLines", NO_ORDER_LINES_CODE, "a receipt needs at least one line")
    elif isinstance(lines, str | bytes | Mapping) or not isinstance(lines, Sequence):
        c.error(
            "receipt.orderLines", INVALID_TYPE_CODE, f"must be an array, not {_type_name(lines)}"
        )
        contributions.append(None)
    elif not lines:
        c.error("receipt.orderLines", NO_ORDER_LINES_CODE, "a receipt needs at least one line")
    elif len(lines) > MAX_ORDER_LINES:
        c.error(
            "receipt.orderLines",
            TOO_MANY_ORDER_LINES_CODE,
            f"at most {MAX_ORDER_LINES} lines",
        )
        contributions.append(None)
    else:
        for index, line in enumerate(lines):
            path = f"receipt.orderLines[{index}]"
            if isinstance(line, Mapping):
                contributions.append(_check_line(c, path, line))
            else:
                c.error(path, INVALID_TYPE_CODE, f"must be an object, not {_type_name(line)}")
                contributions.append(None)

    tip_usable, tip = True, 0
    bottom = c.object_("receipt.bottomLine", receipt.get("bottomLine"), required=False)
    if bottom is not None:
        tip_usable, tip = _check_bottom_line(c, bottom, currency)

    if amount is None or not tip_usable or not contributions or None in contributions:
        return
    total = sum(value for value in contributions if value is not None) + tip
    if total != amount:
        tip_text = f" + tipAmount {tip}" if tip else ""
        c.error(
            "amount",
            RECEIPT_TOTAL_MISMATCH_CODE,
            f"{amount} differs from the receipt: order lines "
            f"{total - tip}{tip_text} = {total} (returned lines count negative)",
        )


def check_checkout(
    amount: int,
    currency: str,
    receipt: Mapping[str, Any] | None,
    *,
    description: str | None = None,
) -> ReceiptCheck:
    """Validate a checkout request's money and receipt; never raises.

    ``amount`` is in minor units of ``currency``; ``description`` becomes the ePayment
    ``paymentDescription``. A receipt is optional; when given it must add up to ``amount``
    (see the module docstring for the sum rule and the limits chosen here).
    """
    c = _Checker()
    known_amount, known_currency = _check_amount(c, amount, currency)
    _check_description(c, description)
    if receipt is not None:
        checked = c.object_("receipt", receipt, required=True)
        if checked is not None:
            _check_receipt(c, checked, known_amount, known_currency)
    return ReceiptCheck(errors=tuple(c.errors), warnings=tuple(c.warnings))


def _pick(source: object, keys: Sequence[str]) -> dict[str, Any]:
    if not isinstance(source, Mapping):
        return {}
    return {key: source[key] for key in keys if source.get(key) is not None}


def _normalize_line(line: Mapping[str, Any]) -> dict[str, Any]:
    out = _pick(line, _ORDER_LINE_KEYS)
    if "taxRate" in out:
        # taxRate is preferred; once it is there (and, checked, agrees) taxPercentage is redundant.
        out.pop("taxPercentage", None)
    if "unitInfo" in out:
        unit_info = _pick(out["unitInfo"], _UNIT_INFO_KEYS)
        if unit_info:
            out["unitInfo"] = unit_info
        else:
            del out["unitInfo"]
    return out


def normalize_receipt(receipt: Mapping[str, Any], *, currency: str, pos_id: str) -> dict[str, Any]:
    """Return the receipt as sent to Vipps, as a new object (the input is not modified).

    Meant for a receipt :func:`check_checkout` accepted; on other input it still returns without
    raising. ``bottomLine.currency`` becomes the checkout ``currency``; ``bottomLine.posId``
    defaults to ``pos_id`` (the till) when absent; ``taxRate`` wins over ``taxPercentage`` (which
    is kept only when it is the line's sole tax field); keys not in the Order Management schema,
    deprecated ``bottomLine`` fields and ``None`` values are dropped.
    """
    raw_lines = receipt.get("orderLines")
    lines: list[dict[str, Any]] = []
    if isinstance(raw_lines, Sequence) and not isinstance(raw_lines, str | bytes):
        lines = [_normalize_line(line) for line in raw_lines if isinstance(line, Mapping)]

    bottom = _pick(receipt.get("bottomLine"), _BOTTOM_LINE_KEYS)
    bottom["currency"] = currency
    bottom.setdefault("posId", pos_id)
    for key, keys in (("paymentSources", PAYMENT_SOURCES), ("barcode", _BARCODE_KEYS)):
        if key in bottom:
            picked = _pick(bottom[key], keys)
            if picked:
                bottom[key] = picked
            else:
                del bottom[key]
    return {"orderLines": lines, "bottomLine": bottom}
