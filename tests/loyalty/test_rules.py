"""The club step's time budget and the binding message shown to the customer."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from app.loyalty.service import identify_deadline, new_binding_message
from app.models import Checkout, Store
from app.service.context import ServiceContext
from app.settings import Settings

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def _ctx() -> ServiceContext:
    class _Ctx:
        settings = Settings()

    return cast(ServiceContext, _Ctx())


def _checkout(expires_at: datetime | None) -> Checkout:
    return Checkout(customer_token_expires_at=expires_at)


def _store(**values: Any) -> Store:
    return Store(**{"member_price_hold": False, "member_price_hold_seconds": 20, **values})


def test_the_step_ends_a_margin_before_the_customer_token_expires() -> None:
    expires = NOW + timedelta(minutes=15)
    deadline = identify_deadline(_checkout(expires), _store(), _ctx(), NOW)
    assert deadline == expires - timedelta(seconds=60)


def test_a_member_price_hold_is_kept_inside_the_token_budget() -> None:
    expires = NOW + timedelta(minutes=15)
    store = _store(member_price_hold=True, member_price_hold_seconds=45)
    deadline = identify_deadline(_checkout(expires), store, _ctx(), NOW)
    assert deadline == expires - timedelta(seconds=60 + 45)


def test_without_a_known_expiry_the_token_lifetime_counts_from_now() -> None:
    deadline = identify_deadline(_checkout(None), None, _ctx(), NOW)
    assert deadline == NOW + timedelta(seconds=900 - 60)


@pytest.mark.parametrize("_", range(50))
def test_binding_messages_match_the_login_api_pattern(_: int) -> None:
    message = new_binding_message()
    assert re.fullmatch(r"[A-Z0-9\-]{5,8}", message)
    assert not set(message) & set("01IO")
