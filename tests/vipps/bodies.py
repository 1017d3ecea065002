"""Builders for the request models and canned answers several test modules share."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from app.vipps.schemas import (
    Amount,
    BottomLine,
    CreatePaymentRequest,
    Customer,
    OrderLine,
    Receipt,
    UnitInfo,
)

from .conftest import REFERENCE, aggregate, amount

CUSTOMER_TOKEN = "wbA8ceVRKkoYiQAVELHeFCC3Sn5dtNCvvEtVPiOT77j6wx7uR965AG6Q+q0ATP4="


def receipt(**line: Any) -> Receipt:
    fields: dict[str, Any] = {
        "name": "Socks",
        "id": "sku-1",
        "total_amount": 10000,
        "total_amount_excluding_tax": 8000,
        "total_tax_amount": 2000,
        "tax_rate": 2500,
        "unit_info": UnitInfo(unit_price=5000, quantity="2", quantity_unit="PCS"),
    }
    fields.update(line)
    return Receipt(
        order_lines=[OrderLine(**fields)],
        bottom_line=BottomLine(currency="NOK", pos_id="pos-2", receipt_number="0042"),
    )


def payment_request(**overrides: Any) -> CreatePaymentRequest:
    fields: dict[str, Any] = {
        "amount": Amount(currency="NOK", value=10000),
        "customer": Customer(customer_token=SecretStr(CUSTOMER_TOKEN)),
        "user_flow": "PUSH_MESSAGE",
        "reference": REFERENCE,
        "payment_description": "Kjøp Kasse 2",
        "receipt": receipt(),
        "metadata": {"till": "pos-2"},
    }
    fields.update(overrides)
    return CreatePaymentRequest(**fields)


def modification(state: str = "AUTHORIZED", **agg: int) -> dict[str, Any]:
    return {
        "amount": amount(),
        "state": state,
        "aggregate": aggregate(**agg),
        "pspReference": "7686f7788898767977",
        "reference": REFERENCE,
    }


def payment(state: str = "AUTHORIZED") -> dict[str, Any]:
    return {
        "reference": REFERENCE,
        "pspReference": "7686f7788898767977",
        "state": state,
        "amount": amount(),
        "aggregate": aggregate(),
        "paymentMethod": {"type": "WALLET"},
        "profile": {},
        "metadata": {"till": "pos-2"},
    }
