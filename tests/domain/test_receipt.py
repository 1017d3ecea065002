"""Receipt and money validation before a checkout reaches Vipps (DESIGN.md §4).

One test (or one parametrized family) per rule: each fails if its rule is removed. The rules the
module settles itself (sum rule with tip and returns, taxRate/taxPercentage together, chosen
length limits) are pinned here too.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.domain import receipt as rc
from app.domain.receipt import (
    ERROR_CODES,
    WARNING_CODES,
    FieldProblem,
    ReceiptCheck,
    check_checkout,
    normalize_receipt,
)
from app.simulator.conformance import validate_schema

L0 = "receipt.orderLines[0]"
_DROP: Any = object()  # an override that removes the key


def _line(**overrides: Any) -> dict[str, Any]:
    """A line that is valid and unsuspicious: 2 × 50.00 NOK at 25 % VAT."""
    line: dict[str, Any] = {
        "name": "Socks",
        "id": "sku-1",
        "totalAmount": 10000,
        "totalAmountExcludingTax": 8000,
        "totalTaxAmount": 2000,
        "taxRate": 2500,
        "unitInfo": {"unitPrice": 5000, "quantity": "2", "quantityUnit": "PCS"},
    }
    line.update(overrides)
    return {k: v for k, v in line.items() if v is not _DROP}


def _receipt(*lines: dict[str, Any], **bottom: Any) -> dict[str, Any]:
    bottom_line: dict[str, Any] = {"currency": "NOK", "posId": "pos-2", "receiptNumber": "0042"}
    bottom_line.update(bottom)
    return {
        "orderLines": list(lines) or [_line()],
        "bottomLine": {k: v for k, v in bottom_line.items() if v is not _DROP},
    }


def _check(
    receipt: Any = None, *, amount: Any = 10000, currency: Any = "NOK", description: Any = None
) -> ReceiptCheck:
    return check_checkout(amount, currency, receipt, description=description)


def _errors(check: ReceiptCheck) -> set[tuple[str, str]]:
    return {(p.field, p.code) for p in check.errors}


def _warnings(check: ReceiptCheck) -> set[tuple[str, str]]:
    return {(p.field, p.code) for p in check.warnings}


def _line_check(**overrides: Any) -> ReceiptCheck:
    """Checks a one-line receipt whose amount follows the line's totalAmount when it is an int."""
    line = _line(**overrides)
    total = line.get("totalAmount")
    amount = total if isinstance(total, int) and not isinstance(total, bool) else 10000
    return _check(_receipt(line), amount=amount)


# --------------------------------------------------------------------------------------------
# The baseline and the Vipps example
# --------------------------------------------------------------------------------------------


def test_clean_receipt_has_no_findings() -> None:
    check = _check(_receipt(), description="Kjøp Kasse 2")
    assert check == ReceiptCheck(errors=(), warnings=())
    assert check.ok


def test_checkout_without_receipt_checks_only_the_money() -> None:
    assert _check(None).ok


def test_ok_is_false_with_an_error_and_true_with_only_warnings() -> None:
    problem = FieldProblem("amount", "x", "y")
    assert not ReceiptCheck(errors=(problem,), warnings=()).ok
    assert ReceiptCheck(errors=(), warnings=(problem,)).ok


# The exact receipt on the Vipps page for this flow (seed/in-store-using-merchant-callback-qr.txt).
VIPPS_EXAMPLE_RECEIPT: dict[str, Any] = {
    "orderLines": [
        {
            "name": "socks",
            "id": "line_item_1",
            "totalAmount": 10000,
            "totalAmountExcludingTax": 8000,
            "totalTaxAmount": 2000,
            "taxRate": 2550,
            "unitInfo": {"unitPrice": 4000, "quantity": "2", "quantityUnit": "PCS"},
        }
    ],
    "bottomLine": {"currency": "NOK", "posId": "pos_122", "receiptNumber": "0527013501"},
}


def test_vipps_example_receipt_passes_with_warnings_only() -> None:
    check = check_checkout(10000, "NOK", VIPPS_EXAMPLE_RECEIPT, description="Purchase of socks")
    assert check.errors == ()
    assert check.ok
    # 4000 × 2 = 8000 ≠ 10000 with no discount; 25.5 % of 8000 = 2040 ≠ 2000.
    assert _warnings(check) == {
        (f"{L0}.unitInfo.unitPrice", "unit_price_mismatch"),
        (f"{L0}.totalTaxAmount", "tax_rate_mismatch"),
    }


def test_vipps_example_receipt_normalizes_to_the_order_management_schema() -> None:
    normalized = normalize_receipt(VIPPS_EXAMPLE_RECEIPT, currency="NOK", pos_id="till-3")
    assert normalized == VIPPS_EXAMPLE_RECEIPT
    validate_schema("order-management-latest", "Receipt", normalized)


# --------------------------------------------------------------------------------------------
# Amount, currency, description
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", ["10000", 10000.0, True, False, None, [10000], {"value": 1}])
def test_amount_must_be_an_integer(amount: Any) -> None:
    assert ("amount", "invalid_type") in _errors(_check(amount=amount))


@pytest.mark.parametrize(
    ("currency", "too_small", "smallest"), [("NOK", 99, 100), ("DKK", 0, 1), ("EUR", 0, 1)]
)
def test_amount_minimum_per_currency(currency: str, too_small: int, smallest: int) -> None:
    assert _errors(_check(amount=too_small, currency=currency)) == {("amount", "amount_too_small")}
    assert _check(amount=smallest, currency=currency).ok


def test_negative_amount_is_too_small() -> None:
    assert ("amount", "amount_too_small") in _errors(_check(amount=-100))


def test_amount_maximum() -> None:
    assert _check(amount=65_000_000).ok
    assert _errors(_check(amount=65_000_001)) == {("amount", "amount_too_large")}


@pytest.mark.parametrize("currency", ["SEK", "nok", "", "NOK "])
def test_unsupported_currency(currency: str) -> None:
    assert ("currency", "unsupported_currency") in _errors(_check(currency=currency))


@pytest.mark.parametrize("currency", [None, 578, True])
def test_currency_must_be_a_string(currency: Any) -> None:
    assert ("currency", "invalid_type") in _errors(_check(currency=currency))


def test_description_length_bounds() -> None:
    assert _check(description="abc").ok
    assert _check(description="x" * 100).ok
    assert _errors(_check(description="ab")) == {("description", "too_short")}
    assert _errors(_check(description="x" * 101)) == {("description", "too_long")}


def test_description_must_be_a_string() -> None:
    assert _errors(_check(description=123)) == {("description", "invalid_type")}


# --------------------------------------------------------------------------------------------
# Receipt structure
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("receipt", ["receipt", 1, True, [_line()]])
def test_receipt_must_be_an_object(receipt: Any) -> None:
    assert _errors(_check(receipt)) == {("receipt", "invalid_type")}


@pytest.mark.parametrize("lines", [_DROP, None, []])
def test_receipt_needs_order_lines(lines: Any) -> None:
    receipt = _receipt()
    if lines is _DROP:
        del receipt["orderLines"]
    else:
        receipt["orderLines"] = lines
    assert _errors(_check(receipt)) == {("receipt.orderLines", "no_order_lines")}


@pytest.mark.parametrize("lines", ["lines", {"0": _line()}, 3])
def test_order_lines_must_be_an_array(lines: Any) -> None:
    receipt = _receipt()
    receipt["orderLines"] = lines
    assert _errors(_check(receipt)) == {("receipt.orderLines", "invalid_type")}


def test_order_line_count_is_bounded() -> None:
    line = _line(totalAmount=1, totalAmountExcludingTax=1, totalTaxAmount=0, taxRate=0)
    del line["unitInfo"]
    assert _check(_receipt(*[line] * 1000), amount=1000).ok
    too_many = _check(_receipt(*[line] * 1001), amount=1001)
    assert _errors(too_many) == {("receipt.orderLines", "too_many_order_lines")}


@pytest.mark.parametrize("line", ["x", 1, None, [1]])
def test_order_line_must_be_an_object(line: Any) -> None:
    receipt = _receipt()
    receipt["orderLines"] = [_line(), line]
    assert ("receipt.orderLines[1]", "invalid_type") in _errors(_check(receipt))


def test_bottom_line_is_optional() -> None:
    receipt = _receipt()
    del receipt["bottomLine"]
    assert _check(receipt).ok


@pytest.mark.parametrize("bottom", ["NOK", [1], 5])
def test_bottom_line_must_be_an_object(bottom: Any) -> None:
    receipt = _receipt()
    receipt["bottomLine"] = bottom
    assert _errors(_check(receipt)) == {("receipt.bottomLine", "invalid_type")}


def test_unknown_fields_are_ignored() -> None:
    receipt = _receipt(_line(colour="blue"), loyaltyPoints=3)
    receipt["extra"] = {"anything": [1, 2]}
    receipt["orderLines"][0]["unitInfo"]["weightNet"] = "?"
    assert _check(receipt) == ReceiptCheck(errors=(), warnings=())


# --------------------------------------------------------------------------------------------
# Order lines
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["name", "id"])
def test_line_text_is_required(key: str) -> None:
    assert _errors(_line_check(**{key: _DROP})) == {(f"{L0}.{key}", "required")}
    assert _errors(_line_check(**{key: None})) == {(f"{L0}.{key}", "required")}


@pytest.mark.parametrize("key", ["name", "id"])
@pytest.mark.parametrize("value", ["", "   ", "\t\n"])
def test_line_text_must_not_be_blank(key: str, value: str) -> None:
    assert _errors(_line_check(**{key: value})) == {(f"{L0}.{key}", "blank")}


@pytest.mark.parametrize("key", ["name", "id"])
def test_line_text_length_is_bounded(key: str) -> None:
    assert _line_check(**{key: "x" * 2048}).ok
    assert _errors(_line_check(**{key: "x" * 2049})) == {(f"{L0}.{key}", "too_long")}


@pytest.mark.parametrize("key", ["name", "id"])
@pytest.mark.parametrize("value", [1, True, ["a"], {"a": 1}])
def test_line_text_must_be_a_string(key: str, value: Any) -> None:
    assert _errors(_line_check(**{key: value})) == {(f"{L0}.{key}", "invalid_type")}


AMOUNT_KEYS = ["totalAmount", "totalAmountExcludingTax", "totalTaxAmount"]


@pytest.mark.parametrize("key", AMOUNT_KEYS)
def test_line_amounts_are_required(key: str) -> None:
    assert (f"{L0}.{key}", "required") in _errors(_line_check(**{key: _DROP}))


@pytest.mark.parametrize("key", AMOUNT_KEYS)
@pytest.mark.parametrize("value", ["10000", 10000.0, True, False, [1], {"v": 1}])
def test_line_amounts_must_be_integers(key: str, value: Any) -> None:
    assert (f"{L0}.{key}", "invalid_type") in _errors(_line_check(**{key: value}))


@pytest.mark.parametrize("key", AMOUNT_KEYS)
def test_line_amounts_are_bounded_to_int64(key: str) -> None:
    assert (f"{L0}.{key}", "out_of_range") in _errors(_line_check(**{key: 2**63}))


def test_line_total_must_equal_excluding_tax_plus_tax() -> None:
    check = _line_check(totalAmountExcludingTax=8001)
    assert _errors(check) == {(f"{L0}.totalAmount", "line_total_mismatch")}


def test_tax_rate_or_percentage_is_required() -> None:
    assert _errors(_line_check(taxRate=_DROP)) == {(f"{L0}.taxRate", "tax_missing")}
    assert _errors(_line_check(taxRate=None)) == {(f"{L0}.taxRate", "tax_missing")}


def test_tax_rate_and_percentage_together_are_fine_when_they_agree() -> None:
    check = _line_check(taxRate=2500, taxPercentage=25)
    assert check.ok


def test_tax_rate_and_percentage_together_are_refused_when_they_disagree() -> None:
    check = _line_check(taxRate=2500, taxPercentage=15)
    assert _errors(check) == {(f"{L0}.taxRate", "tax_conflict")}


@pytest.mark.parametrize(("rate", "ok"), [(-1, False), (0, True), (10000, True), (10001, False)])
def test_tax_rate_range(rate: int, ok: bool) -> None:
    check = _line_check(taxRate=rate)
    assert check.ok is ok
    assert ((f"{L0}.taxRate", "out_of_range") in _errors(check)) is not ok


@pytest.mark.parametrize(("pct", "ok"), [(-1, False), (0, True), (100, True), (101, False)])
def test_tax_percentage_range(pct: int, ok: bool) -> None:
    check = _line_check(taxRate=_DROP, taxPercentage=pct)
    assert check.ok is ok
    assert ((f"{L0}.taxPercentage", "out_of_range") in _errors(check)) is not ok


@pytest.mark.parametrize("key", ["taxRate", "taxPercentage"])
@pytest.mark.parametrize("value", ["25", 25.0, True])
def test_tax_fields_must_be_integers(key: str, value: Any) -> None:
    overrides: dict[str, Any] = {"taxRate": _DROP, key: value}
    assert (f"{L0}.{key}", "invalid_type") in _errors(_line_check(**overrides))


@pytest.mark.parametrize("quantity", ["2", "0", "0.822", "1234567.12", "1.12345678", "0010"])
def test_quantity_valid_forms(quantity: str) -> None:
    unit_info = {"unitPrice": 5000, "quantity": quantity}
    assert _line_check(unitInfo=unit_info).ok


@pytest.mark.parametrize(
    "quantity",
    [
        "",
        "1.",
        ".5",
        "1,5",
        "-1",
        "+1",
        "1e3",
        " 2",
        "2\n",
        "1.123456789",  # nine decimals
        "12345678901",  # eleven characters
        "1234567.123",  # eleven characters, decimals fine
        "١",  # an Arabic-Indic digit matches \d in Python, not in Vipps's pattern
        "NaN",
    ],
)
def test_quantity_pattern_and_length(quantity: str) -> None:
    check = _line_check(unitInfo={"unitPrice": 5000, "quantity": quantity})
    assert _errors(check) == {(f"{L0}.unitInfo.quantity", "invalid_quantity")}


@pytest.mark.parametrize("quantity", [2, 2.0, True, ["2"]])
def test_quantity_must_be_a_string(quantity: Any) -> None:
    check = _line_check(unitInfo={"unitPrice": 5000, "quantity": quantity})
    assert _errors(check) == {(f"{L0}.unitInfo.quantity", "invalid_type")}


def test_unit_info_needs_quantity_and_unit_price() -> None:
    assert _errors(_line_check(unitInfo={"unitPrice": 5000})) == {
        (f"{L0}.unitInfo.quantity", "required")
    }
    assert _errors(_line_check(unitInfo={"quantity": "2"})) == {
        (f"{L0}.unitInfo.unitPrice", "required")
    }


def test_unit_info_is_optional() -> None:
    assert _line_check(unitInfo=_DROP).ok


@pytest.mark.parametrize("unit_info", ["2 PCS", [1], 2])
def test_unit_info_must_be_an_object(unit_info: Any) -> None:
    assert _errors(_line_check(unitInfo=unit_info)) == {(f"{L0}.unitInfo", "invalid_type")}


def test_unit_price_must_not_be_negative() -> None:
    check = _line_check(unitInfo={"unitPrice": -5000, "quantity": "2"})
    assert _errors(check) == {(f"{L0}.unitInfo.unitPrice", "out_of_range")}


@pytest.mark.parametrize("price", ["5000", 5000.0, True])
def test_unit_price_must_be_an_integer(price: Any) -> None:
    check = _line_check(unitInfo={"unitPrice": price, "quantity": "2"})
    assert _errors(check) == {(f"{L0}.unitInfo.unitPrice", "invalid_type")}


@pytest.mark.parametrize("unit", sorted(rc.QUANTITY_UNITS))
def test_quantity_units_accepted(unit: str) -> None:
    assert _line_check(unitInfo={"unitPrice": 5000, "quantity": "2", "quantityUnit": unit}).ok


@pytest.mark.parametrize("unit", ["pcs", "KILO", "HOUR", ""])
def test_quantity_unit_must_be_known(unit: str) -> None:
    check = _line_check(unitInfo={"unitPrice": 5000, "quantity": "2", "quantityUnit": unit})
    assert _errors(check) == {(f"{L0}.unitInfo.quantityUnit", "unsupported_value")}


def test_quantity_unit_must_be_a_string() -> None:
    check = _line_check(unitInfo={"unitPrice": 5000, "quantity": "2", "quantityUnit": 1})
    assert _errors(check) == {(f"{L0}.unitInfo.quantityUnit", "invalid_type")}


def test_discount_must_not_be_negative() -> None:
    assert _errors(_line_check(discount=-1)) == {(f"{L0}.discount", "out_of_range")}


@pytest.mark.parametrize("discount", ["0", True, 1.5])
def test_discount_must_be_an_integer(discount: Any) -> None:
    assert _errors(_line_check(discount=discount)) == {(f"{L0}.discount", "invalid_type")}


@pytest.mark.parametrize("key", ["isReturn", "isShipping"])
@pytest.mark.parametrize("value", ["true", 1, 0])
def test_line_flags_must_be_booleans(key: str, value: Any) -> None:
    assert _errors(_line_check(**{key: value})) == {(f"{L0}.{key}", "invalid_type")}


def test_product_url_must_be_a_bounded_string() -> None:
    assert _line_check(productUrl="https://example.com/socks").ok
    assert _errors(_line_check(productUrl=5)) == {(f"{L0}.productUrl", "invalid_type")}
    long_url = "https://example.com/" + "x" * 2048
    assert _errors(_line_check(productUrl=long_url)) == {(f"{L0}.productUrl", "too_long")}


def test_null_optional_fields_are_accepted() -> None:
    check = _line_check(
        discount=None, productUrl=None, isReturn=None, isShipping=None, taxPercentage=None
    )
    assert check == ReceiptCheck(errors=(), warnings=())


def test_errors_name_the_offending_line_index() -> None:
    receipt = _receipt(_line(), _line(id="sku-2", name=""))
    assert _errors(_check(receipt, amount=20000)) == {("receipt.orderLines[1].name", "blank")}


# --------------------------------------------------------------------------------------------
# The sum rule
# --------------------------------------------------------------------------------------------


def test_line_totals_must_add_up_to_the_amount() -> None:
    assert _check(_receipt(_line(), _line(id="sku-2")), amount=20000).ok
    check = _check(_receipt(_line(), _line(id="sku-2")), amount=19900)
    assert _errors(check) == {("amount", "receipt_total_mismatch")}


def test_returned_lines_count_negative() -> None:
    returned = _line(
        id="sku-9",
        isReturn=True,
        totalAmount=2500,
        totalAmountExcludingTax=2000,
        totalTaxAmount=500,
        unitInfo={"unitPrice": 2500, "quantity": "1"},
    )
    assert _check(_receipt(_line(), returned), amount=7500).ok
    assert ("amount", "receipt_total_mismatch") in _errors(
        _check(_receipt(_line(), returned), amount=12500)
    )


def test_tip_is_part_of_the_amount() -> None:
    assert _check(_receipt(tipAmount=1500), amount=11500).ok
    check = _check(_receipt(tipAmount=1500), amount=10000)
    assert _errors(check) == {("amount", "receipt_total_mismatch")}


def test_the_sum_rule_holds_for_a_receipt_without_a_bottom_line() -> None:
    # bottomLine is optional: without it there is no tip, and the lines alone make the amount.
    half = _line(
        totalAmount=5000,
        totalAmountExcludingTax=4000,
        totalTaxAmount=1000,
        unitInfo={"unitPrice": 5000, "quantity": "1"},
    )
    assert _check({"orderLines": [half]}, amount=5000).ok
    check = _check({"orderLines": [half]}, amount=10000)
    assert _errors(check) == {("amount", "receipt_total_mismatch")}


def test_sum_is_not_checked_when_a_line_total_is_unusable() -> None:
    # Only the bad line is reported, not a consequential sum mismatch.
    receipt = _receipt(_line(), _line(id="sku-2", totalAmount="100"))
    assert ("amount", "receipt_total_mismatch") not in _errors(_check(receipt, amount=10000))


# --------------------------------------------------------------------------------------------
# Bottom line
# --------------------------------------------------------------------------------------------


def test_bottom_line_currency_may_be_absent() -> None:
    assert _check(_receipt(currency=_DROP)).ok


def test_bottom_line_currency_must_match_the_checkout() -> None:
    check = _check(_receipt(currency="DKK"), currency="NOK")
    assert _errors(check) == {("receipt.bottomLine.currency", "currency_mismatch")}
    assert _check(_receipt(currency="DKK"), currency="DKK").ok


def test_bottom_line_currency_must_be_supported() -> None:
    check = _check(_receipt(currency="SEK"))
    assert _errors(check) == {("receipt.bottomLine.currency", "unsupported_value")}


def test_tip_must_not_be_negative() -> None:
    check = _check(_receipt(tipAmount=-100), amount=9900)
    assert _errors(check) == {("receipt.bottomLine.tipAmount", "out_of_range")}


def test_tip_must_be_an_integer() -> None:
    check = _check(_receipt(tipAmount="100"), amount=10100)
    assert _errors(check) == {("receipt.bottomLine.tipAmount", "invalid_type")}


@pytest.mark.parametrize("key", ["posId", "receiptNumber"])
@pytest.mark.parametrize("value", [42, 4.2, True, ["a"]])
def test_pos_id_and_receipt_number_must_be_strings(key: str, value: Any) -> None:
    check = _check(_receipt(**{key: value}))
    assert _errors(check) == {(f"receipt.bottomLine.{key}", "invalid_type")}


@pytest.mark.parametrize("key", ["posId", "receiptNumber"])
def test_pos_id_and_receipt_number_length_is_bounded(key: str) -> None:
    assert _check(_receipt(**{key: "x" * 255})).ok
    check = _check(_receipt(**{key: "x" * 256}))
    assert _errors(check) == {(f"receipt.bottomLine.{key}", "too_long")}


@pytest.mark.parametrize("fmt", sorted(rc.BARCODE_FORMATS))
def test_barcode_formats_accepted(fmt: str) -> None:
    assert _check(_receipt(barcode={"format": fmt, "data": "123456"})).ok


@pytest.mark.parametrize("fmt", ["EAN13", "QR", "code 128", ""])
def test_barcode_format_must_be_known(fmt: str) -> None:
    check = _check(_receipt(barcode={"format": fmt, "data": "123456"}))
    assert _errors(check) == {("receipt.bottomLine.barcode.format", "unsupported_value")}


def test_barcode_needs_format_and_data() -> None:
    assert _errors(_check(_receipt(barcode={"data": "1"}))) == {
        ("receipt.bottomLine.barcode.format", "required")
    }
    assert _errors(_check(_receipt(barcode={"format": "EAN-13"}))) == {
        ("receipt.bottomLine.barcode.data", "required")
    }
    assert _errors(_check(_receipt(barcode={"format": "EAN-13", "data": 123}))) == {
        ("receipt.bottomLine.barcode.data", "invalid_type")
    }


def test_barcode_must_be_an_object() -> None:
    check = _check(_receipt(barcode="EAN-13:123"))
    assert _errors(check) == {("receipt.bottomLine.barcode", "invalid_type")}


@pytest.mark.parametrize("key", rc.PAYMENT_SOURCES)
def test_payment_sources_must_not_be_negative(key: str) -> None:
    assert _check(_receipt(paymentSources={key: 0})).ok
    check = _check(_receipt(paymentSources={key: -1}))
    assert _errors(check) == {(f"receipt.bottomLine.paymentSources.{key}", "out_of_range")}


@pytest.mark.parametrize("value", ["100", True, 1.0])
def test_payment_sources_must_be_integers(value: Any) -> None:
    check = _check(_receipt(paymentSources={"card": value}))
    assert _errors(check) == {("receipt.bottomLine.paymentSources.card", "invalid_type")}


def test_payment_sources_must_be_an_object() -> None:
    check = _check(_receipt(paymentSources=[100]))
    assert _errors(check) == {("receipt.bottomLine.paymentSources", "invalid_type")}


# --------------------------------------------------------------------------------------------
# Warnings: suspicious, never blocking
# --------------------------------------------------------------------------------------------


def test_unit_price_times_quantity_not_matching_total_is_a_warning() -> None:
    check = _line_check(unitInfo={"unitPrice": 4000, "quantity": "2"})
    assert check.ok
    assert _warnings(check) == {(f"{L0}.unitInfo.unitPrice", "unit_price_mismatch")}


def test_off_by_one_minor_unit_on_an_exact_product_is_still_a_warning() -> None:
    check = _line_check(unitInfo={"unitPrice": 5001, "quantity": "2"})
    assert _warnings(check) == {(f"{L0}.unitInfo.unitPrice", "unit_price_mismatch")}


def test_a_discount_explains_the_unit_price_difference() -> None:
    # Order Management's own example: 3 × 25.00 with 25.00 discount = 50.00.
    line = _line(
        totalAmount=5000,
        totalAmountExcludingTax=4000,
        totalTaxAmount=1000,
        discount=2500,
        unitInfo={"unitPrice": 2500, "quantity": "3", "quantityUnit": "PCS"},
    )
    assert _check(_receipt(line), amount=5000) == ReceiptCheck(errors=(), warnings=())


def test_fractional_quantity_rounds_to_the_minor_unit() -> None:
    # 0.333 kg × 19.99 = 6.65667 → 6.66.
    line = _line(
        totalAmount=666,
        totalAmountExcludingTax=533,
        totalTaxAmount=133,
        unitInfo={"unitPrice": 1999, "quantity": "0.333", "quantityUnit": "KG"},
    )
    assert _check(_receipt(line), amount=666) == ReceiptCheck(errors=(), warnings=())


def test_tax_not_matching_the_rate_is_a_warning() -> None:
    check = _line_check(taxRate=1500)
    assert check.ok
    assert _warnings(check) == {(f"{L0}.totalTaxAmount", "tax_rate_mismatch")}


@pytest.mark.parametrize("tax", [1999, 2001])
def test_tax_within_one_minor_unit_of_the_rate_is_fine(tax: int) -> None:
    line = _line(totalAmount=8000 + tax, totalTaxAmount=tax, unitInfo=_DROP)
    assert _check(_receipt(line), amount=8000 + tax) == ReceiptCheck(errors=(), warnings=())


def test_tax_rate_mismatch_uses_tax_percentage_when_it_is_the_only_rate() -> None:
    check = _line_check(taxRate=_DROP, taxPercentage=15)
    assert (f"{L0}.totalTaxAmount", "tax_rate_mismatch") in _warnings(check)


def test_tax_percentage_is_deprecated() -> None:
    check = _line_check(taxRate=_DROP, taxPercentage=25)
    assert check.ok
    assert _warnings(check) == {(f"{L0}.taxPercentage", "tax_percentage_deprecated")}


@pytest.mark.parametrize("key", AMOUNT_KEYS)
def test_negative_line_amounts_are_a_warning(key: str) -> None:
    line = _line(totalAmount=-100, totalAmountExcludingTax=-80, totalTaxAmount=-20, unitInfo=_DROP)
    check = _check(_receipt(line, _line(id="sku-2")), amount=9900)
    assert check.ok
    assert (f"{L0}.{key}", "negative_line_amount") in _warnings(check)


@pytest.mark.parametrize("key", rc._DEPRECATED_BOTTOM_LINE_KEYS)
def test_deprecated_bottom_line_fields_are_a_warning(key: str) -> None:
    check = _check(_receipt(**{key: 100}))
    assert check.ok
    assert _warnings(check) == {(f"receipt.bottomLine.{key}", "deprecated_field_dropped")}


def test_every_reported_code_is_a_documented_code() -> None:
    assert ERROR_CODES.isdisjoint(WARNING_CODES)
    check = _check(VIPPS_EXAMPLE_RECEIPT, amount=1, currency="SEK", description="")
    assert {p.code for p in check.errors} <= ERROR_CODES
    assert {p.code for p in check.warnings} <= WARNING_CODES


# --------------------------------------------------------------------------------------------
# normalize_receipt
# --------------------------------------------------------------------------------------------


def test_normalize_sets_the_checkout_currency() -> None:
    receipt = _receipt(currency=_DROP)
    assert normalize_receipt(receipt, currency="DKK", pos_id="t")["bottomLine"]["currency"] == "DKK"


def test_normalize_creates_a_bottom_line_when_absent() -> None:
    receipt = _receipt()
    del receipt["bottomLine"]
    out = normalize_receipt(receipt, currency="NOK", pos_id="till-3")
    assert out["bottomLine"] == {"currency": "NOK", "posId": "till-3"}
    validate_schema("order-management-latest", "Receipt", out)


@pytest.mark.parametrize("pos_id", [_DROP, None])
def test_normalize_defaults_pos_id_to_the_till(pos_id: Any) -> None:
    out = normalize_receipt(_receipt(posId=pos_id), currency="NOK", pos_id="till-3")
    assert out["bottomLine"]["posId"] == "till-3"


def test_normalize_keeps_the_tills_own_pos_id() -> None:
    out = normalize_receipt(_receipt(posId="pos-2"), currency="NOK", pos_id="till-3")
    assert out["bottomLine"]["posId"] == "pos-2"


def test_normalize_prefers_tax_rate_over_an_agreeing_tax_percentage() -> None:
    receipt = _receipt(_line(taxRate=2500, taxPercentage=25))
    line = normalize_receipt(receipt, currency="NOK", pos_id="t")["orderLines"][0]
    assert line["taxRate"] == 2500
    assert "taxPercentage" not in line


def test_normalize_keeps_a_lone_tax_percentage() -> None:
    receipt = _receipt(_line(taxRate=_DROP, taxPercentage=25))
    out = normalize_receipt(receipt, currency="NOK", pos_id="t")
    assert out["orderLines"][0]["taxPercentage"] == 25
    assert "taxRate" not in out["orderLines"][0]
    validate_schema("order-management-2.3.24", "Receipt", out)


def test_normalize_drops_unknown_and_deprecated_keys_and_nulls() -> None:
    line = _line(colour="blue", discount=None, productUrl=None, isReturn=False)
    line["unitInfo"] = {"unitPrice": 5000, "quantity": "2", "quantityUnit": None, "x": 1}
    receipt = _receipt(
        line,
        totalAmount=10000,
        terminalId="t-1",
        receiptNumber=None,
        barcode={"format": "EAN-13", "data": "123", "colour": "red"},
        paymentSources={"card": 10000, "giftCard": None, "crypto": 5},
    )
    receipt["signature"] = "abc"
    out = normalize_receipt(receipt, currency="NOK", pos_id="till-3")
    assert out == {
        "orderLines": [
            {
                "name": "Socks",
                "id": "sku-1",
                "totalAmount": 10000,
                "totalAmountExcludingTax": 8000,
                "totalTaxAmount": 2000,
                "taxRate": 2500,
                "unitInfo": {"unitPrice": 5000, "quantity": "2"},
                "isReturn": False,
            }
        ],
        "bottomLine": {
            "currency": "NOK",
            "posId": "pos-2",
            "barcode": {"format": "EAN-13", "data": "123"},
            "paymentSources": {"card": 10000},
        },
    }
    validate_schema("order-management-latest", "Receipt", out)


def test_normalize_drops_nested_objects_left_empty() -> None:
    receipt = _receipt(_line(unitInfo={"note": 1}), paymentSources={"giftCard": None})
    out = normalize_receipt(receipt, currency="NOK", pos_id="t")
    assert "unitInfo" not in out["orderLines"][0]
    assert "paymentSources" not in out["bottomLine"]


def test_normalize_does_not_modify_its_input() -> None:
    receipt = _receipt(_line(taxPercentage=25, extra=1), currency=_DROP, posId=_DROP)
    before = copy.deepcopy(receipt)
    normalize_receipt(receipt, currency="NOK", pos_id="till-3")
    assert receipt == before


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

_quantities = st.one_of(
    st.integers(0, 999).map(str),
    st.decimals(min_value=0, max_value=99, places=3, allow_nan=False).map(lambda d: f"{d:f}"),
)


@st.composite
def _valid_lines(draw: st.DrawFn) -> dict[str, Any]:
    excluding = draw(st.integers(0, 2_000_000))
    rate = draw(st.sampled_from([0, 1000, 1200, 1500, 2500, 2550]))
    tax = int((Decimal(excluding) * rate / 10_000).quantize(Decimal(1)) + draw(st.integers(-5, 5)))
    tax = max(tax, 0)
    line: dict[str, Any] = {
        "name": draw(st.text(min_size=1, max_size=30).filter(str.strip)),
        "id": draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1)),
        "totalAmount": excluding + tax,
        "totalAmountExcludingTax": excluding,
        "totalTaxAmount": tax,
    }
    if draw(st.booleans()):
        line["taxRate"] = rate
    else:
        line["taxPercentage"] = rate // 100
        if rate % 100:
            line["taxPercentage"] = None
            line["taxRate"] = rate
    if draw(st.booleans()):
        line["unitInfo"] = {
            "unitPrice": draw(st.integers(0, 1_000_000)),
            "quantity": draw(_quantities),
            "quantityUnit": draw(st.sampled_from(sorted(rc.QUANTITY_UNITS))),
        }
    if draw(st.booleans()):
        line["discount"] = draw(st.integers(0, 10_000))
    line["isReturn"] = draw(st.sampled_from([None, False, True]))
    line["isShipping"] = draw(st.sampled_from([None, False, True]))
    return line


@st.composite
def _valid_checkouts(draw: st.DrawFn) -> tuple[int, str, dict[str, Any]]:
    currency = draw(st.sampled_from(sorted(rc.SUPPORTED_CURRENCIES)))
    lines = draw(st.lists(_valid_lines(), min_size=1, max_size=6))
    tip = draw(st.one_of(st.none(), st.integers(0, 50_000)))
    total = sum(-ln["totalAmount"] if ln["isReturn"] else ln["totalAmount"] for ln in lines)
    amount = total + (tip or 0)
    if amount < rc.MIN_AMOUNT[currency]:
        # Top up with a plain line so the checkout is payable.
        extra = rc.MIN_AMOUNT[currency] - amount
        lines.append(
            {
                "name": "Top-up",
                "id": "top-up",
                "totalAmount": extra,
                "totalAmountExcludingTax": extra,
                "totalTaxAmount": 0,
                "taxRate": 0,
            }
        )
        amount = rc.MIN_AMOUNT[currency]
    bottom: dict[str, Any] = {"currency": draw(st.sampled_from([currency, None]))}
    if tip is not None:
        bottom["tipAmount"] = tip
    if draw(st.booleans()):
        bottom["barcode"] = {
            "format": draw(st.sampled_from(sorted(rc.BARCODE_FORMATS))),
            "data": draw(st.text(max_size=20)),
        }
    if draw(st.booleans()):
        bottom["paymentSources"] = {"card": amount}
    return amount, currency, {"orderLines": lines, "bottomLine": bottom}


@settings(max_examples=200, deadline=None)
@given(_valid_checkouts())
def test_valid_receipts_have_no_errors(checkout: tuple[int, str, dict[str, Any]]) -> None:
    amount, currency, receipt = checkout
    check = check_checkout(amount, currency, receipt)
    assert check.errors == ()
    assert {p.code for p in check.warnings} <= WARNING_CODES


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_valid_checkouts())
def test_normalized_valid_receipts_conform_and_stay_valid(
    checkout: tuple[int, str, dict[str, Any]],
) -> None:
    amount, currency, receipt = checkout
    out = normalize_receipt(receipt, currency=currency, pos_id="till-1")
    assert check_checkout(amount, currency, out).errors == ()
    assert normalize_receipt(out, currency=currency, pos_id="other") == out
    assert out["bottomLine"]["currency"] == currency
    validate_schema("order-management-latest", "Receipt", out)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.decimals(allow_nan=True),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


def _shaped(keys: tuple[str, ...], values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.dictionaries(st.sampled_from(keys), values, max_size=len(keys))


_junk_unit_info = _shaped(rc._UNIT_INFO_KEYS, _json) | _json
_junk_line = _shaped(rc._ORDER_LINE_KEYS, _json | _junk_unit_info) | _json
_junk_bottom = (
    _shaped(
        (*rc._BOTTOM_LINE_KEYS, *rc._DEPRECATED_BOTTOM_LINE_KEYS),
        _json | _shaped(rc.PAYMENT_SOURCES, _json) | _shaped(rc._BARCODE_KEYS, _json),
    )
    | _json
)
_junk_receipt = (
    st.fixed_dictionaries(
        {},
        optional={
            "orderLines": st.lists(_junk_line, max_size=4) | _json,
            "bottomLine": _junk_bottom,
        },
    )
    | _json
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    amount=_json,
    currency=st.sampled_from(["NOK", "DKK", "EUR"]) | _json,
    receipt=_junk_receipt,
    description=_json,
)
def test_junk_never_raises(amount: Any, currency: Any, receipt: Any, description: Any) -> None:
    check = check_checkout(amount, currency, receipt, description=description)
    assert {p.code for p in check.errors} <= ERROR_CODES
    assert {p.code for p in check.warnings} <= WARNING_CODES
    assert all(isinstance(p.message, str) and p.field for p in check.errors + check.warnings)
    if isinstance(receipt, dict):
        normalize_receipt(receipt, currency="NOK", pos_id="till-1")


# --------------------------------------------------------------------------------------------
# Boundaries the mutation tests found untested (docs/mutation.md)
# --------------------------------------------------------------------------------------------


def test_an_integer_may_be_as_large_as_int64_and_no_larger() -> None:
    largest = _line_check(unitInfo={"unitPrice": 2**63 - 1, "quantity": "1"})
    assert (f"{L0}.unitInfo.unitPrice", "out_of_range") not in _errors(largest)
    beyond = _line_check(unitInfo={"unitPrice": 2**63, "quantity": "1"})
    assert (f"{L0}.unitInfo.unitPrice", "out_of_range") in _errors(beyond)


def test_tax_one_minor_unit_off_is_rounding_and_two_off_is_flagged() -> None:
    def tax_warning(tax: int) -> bool:
        check = _line_check(totalAmount=8000 + tax, totalTaxAmount=tax)
        return (f"{L0}.totalTaxAmount", "tax_rate_mismatch") in _warnings(check)

    assert not tax_warning(2001)
    assert tax_warning(2002)


def test_a_returned_line_with_an_unusable_total_is_reported_not_summed() -> None:
    check = _check(_receipt(_line(isReturn=True, totalAmount="100")), amount=10000)
    assert _errors(check) == {(f"{L0}.totalAmount", "invalid_type")}


def test_a_line_whose_return_flag_is_unusable_is_left_out_of_the_sum() -> None:
    check = _check(_receipt(_line(isReturn="yes")), amount=5000)
    assert _errors(check) == {(f"{L0}.isReturn", "invalid_type")}


def test_without_a_known_currency_an_amount_must_still_be_at_least_one() -> None:
    assert ("amount", "amount_too_small") in _errors(_check(amount=0, currency="SEK"))
    assert ("amount", "amount_too_small") not in _errors(_check(amount=1, currency="SEK"))


def test_a_tax_free_line_is_not_flagged() -> None:
    check = _line_check(
        totalAmount=8000,
        totalAmountExcludingTax=8000,
        totalTaxAmount=0,
        taxRate=0,
        unitInfo={"unitPrice": 4000, "quantity": "2"},
    )
    assert (check.errors, check.warnings) == ((), ())


def test_a_unit_price_one_minor_unit_off_is_flagged_also_with_a_discount() -> None:
    def unit_price_warning(**line: Any) -> bool:
        return (f"{L0}.unitInfo.unitPrice", "unit_price_mismatch") in _warnings(_line_check(**line))

    assert not unit_price_warning(unitInfo={"unitPrice": 5000, "quantity": "2"})
    assert unit_price_warning(unitInfo={"unitPrice": 10001, "quantity": "1"})  # 1 off
    # 2 × 6000 = 12000 is the total before a discount of 2000: right; 2 × 6001 is not.
    assert not unit_price_warning(discount=2000, unitInfo={"unitPrice": 6000, "quantity": "2"})
    assert unit_price_warning(discount=2000, unitInfo={"unitPrice": 6001, "quantity": "2"})
