"""Edges of the Vipps client's input checks and error classification."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
import respx
from pydantic import ValidationError

from app.vipps.client import RetryPolicy, VippsClient
from app.vipps.client import _max_age as discovery_max_age
from app.vipps.errors import (
    VippsError,
    VippsUnexpectedResponse,
    error_from_response,
    parse_retry_after,
)
from app.vipps.schemas import AccessTokenResponse

from .bodies import payment_request
from .conftest import MSN


def test_a_retry_policy_with_negative_settings_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        RetryPolicy(max_retries=-1)


async def test_an_empty_reference_is_refused_before_anything_is_sent(client: VippsClient) -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        await client.get_payment(MSN, "")


async def test_a_body_of_the_wrong_shape_is_an_unexpected_response(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    router.get("/epayment/v1/payments/ref-1").mock(
        return_value=httpx.Response(200, json={"reference": "ref-1", "state": 42})
    )
    with pytest.raises(VippsUnexpectedResponse, match="documented shape"):
        await client.get_payment(MSN, "ref-1")


def test_a_redirect_from_vipps_is_an_unexpected_response() -> None:
    response = httpx.Response(302, request=httpx.Request("GET", "https://apitest.vipps.no/x"))
    assert type(error_from_response(response, operation="getPayment")) is VippsUnexpectedResponse


def test_an_error_code_without_a_status_is_named() -> None:
    assert "(code 4150)" in str(VippsError("refused", error_code="4150"))


def test_retry_after_as_an_http_date_without_a_zone_is_utc() -> None:
    now = datetime(2015, 10, 21, 7, 27, 30, tzinfo=UTC)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 -0000", now=now) == 30.0


@pytest.mark.parametrize("value", [True, ["3600"], "an hour"])
def test_token_numbers_vipps_cannot_mean_are_dropped(value: object) -> None:
    parsed = AccessTokenResponse.model_validate(
        {"access_token": "t", "token_type": "Bearer", "expires_in": value}
    )
    assert parsed.expires_in is None


@pytest.mark.parametrize(
    "metadata",
    [{f"k{n}": "v" for n in range(6)}, {"": "v"}, {"k" * 101: "v"}, {"k": "v" * 501}],
    ids=["six-pairs", "empty-key", "long-key", "long-value"],
)
def test_payment_metadata_beyond_vipps_limits_is_refused(metadata: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="metadata"):
        payment_request(metadata=metadata)


@pytest.mark.parametrize(
    ("cache_control", "seconds"),
    [
        (None, 300.0),  # Vipps sends none: five minutes
        ("public, max-age=120", 120.0),
        ('max-age="60"', 60.0),
        ("no-store", 0.0),
        ("private, no-cache, max-age=600", 0.0),  # no-cache wins: ask every time
        ("public", 300.0),
    ],
)
def test_the_login_discovery_is_kept_as_long_as_its_cache_control_allows(
    cache_control: str | None, seconds: float
) -> None:
    assert discovery_max_age(cache_control) == seconds
