"""Mapping Vipps's error answers (problem+json, QR, OAuth, Azure gateway text) onto the tree."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from app.simulator.conformance import validate_response
from app.vipps.errors import (
    VippsAuthError,
    VippsConflict,
    VippsError,
    VippsNotFound,
    VippsOutcomeUnknown,
    VippsRejected,
    VippsUnavailable,
    VippsUnexpectedResponse,
    error_from_response,
    error_from_transport,
    parse_retry_after,
    redact,
)

from .conftest import REFERENCE, problem

CAPTURE = f"/epayment/v1/payments/{REFERENCE}/capture"


def response(
    status: int, body: Any = None, *, text: str | None = None, **headers: str
) -> httpx.Response:
    if text is not None:
        return httpx.Response(status, content=text.encode(), headers=headers)
    return httpx.Response(
        status,
        content=json.dumps(body).encode(),
        headers={"Content-Type": "application/problem+json", **headers},
    )


def test_tree_shape() -> None:
    assert issubclass(VippsOutcomeUnknown, VippsUnavailable)
    assert issubclass(VippsNotFound, VippsRejected)
    assert issubclass(VippsConflict, VippsRejected)
    for base in (VippsUnavailable, VippsRejected, VippsAuthError, VippsUnexpectedResponse):
        assert issubclass(base, VippsError)
    assert not issubclass(VippsAuthError, VippsRejected)
    assert not issubclass(VippsRejected, VippsUnavailable)


def test_epayment_problem_with_error_code() -> None:
    body = problem(400, "Bad Request", "Payment is not authorized", code="6080")
    validate_response("POST", CAPTURE, 400, body)
    error = error_from_response(response(400, body), operation="epayment.capture_payment")
    assert type(error) is VippsRejected
    assert error.status == 400
    assert error.error_code == "6080"
    # Vipps's title is only the status phrase: the documented meaning of the code replaces it.
    assert error.title == "not authorized (yet)"
    assert error.detail == "Payment is not authorized"
    assert error.trace_id == "f3b7c0a2-trace"
    assert "6080" in str(error)
    assert "epayment.capture_payment" in str(error)


def test_epayment_top_level_code_is_used_when_no_extra_details() -> None:
    body = {**problem(400, "Bad Request", "Amount too high"), "code": 6090}
    error = error_from_response(response(400, body), operation="capture")
    assert error.error_code == "6090"


def test_404_and_409_get_their_own_classes() -> None:
    not_found = problem(404, "Not Found", "Payment not found")
    conflict = problem(409, "Conflict", "Idempotency-Key already exists", code="4020")
    validate_response("POST", CAPTURE, 404, not_found)
    validate_response("POST", CAPTURE, 409, conflict)
    assert type(error_from_response(response(404, not_found), operation="x")) is VippsNotFound
    error = error_from_response(response(409, conflict), operation="x")
    assert type(error) is VippsConflict
    assert error.error_code == "4020"


def test_qr_invalid_params_are_kept() -> None:
    body = {
        "type": "https://datatracker.ietf.org/doc/html/rfc7231#section-6.5.1",
        "title": "One or more validation errors occurred.",
        "detail": "BadRequest",
        "instance": "00-616e415f5af7584eb4d9369d0fe8d7cc-48b90041faff204c-00",
        "invalidParams": [
            {"name": "LocationDescription", "reason": "The field is too long."},
            {"name": "Category", "reason": "Unknown field."},
        ],
    }
    validate_response("PUT", "/qr/v1/merchant-callback/till-1", 400, body)
    error = error_from_response(response(400, body), operation="qr.put_callback_qr")
    assert type(error) is VippsRejected
    assert [p.name for p in error.invalid_params] == ["LocationDescription", "Category"]
    assert error.names_param("category")
    assert not error.names_param("merchantQrId")
    assert error.trace_id == "00-616e415f5af7584eb4d9369d0fe8d7cc-48b90041faff204c-00"


def test_names_param_also_reads_the_detail_text() -> None:
    body = problem(400, "Bad Request", "Property 'category' is not allowed")
    error = error_from_response(response(400, body), operation="x")
    assert error.names_param("category")
    assert not error.names_param("cat")


def test_qr_exchange_extra_details_without_error_code() -> None:
    body = {
        "title": "Bad request",
        "status": 400,
        "detail": "The request body contains one or more invalid parameters.",
        "extraDetails": [{"name": "customer", "reason": "Customer object is required."}],
    }
    validate_response("POST", "/qr/v1/exchange/customer", 400, body)
    error = error_from_response(response(400, body), operation="qr.exchange_customer_token")
    assert error.error_code is None
    assert error.invalid_params[0].name == "customer"
    assert error.invalid_params[0].reason == "Customer object is required."


def test_azure_gateway_json_401_maps_to_auth_error() -> None:
    body = {
        "statusCode": 401,
        "message": "Access denied due to invalid subscription key. Make sure to provide a valid "
        "key for an active subscription.",
    }
    error = error_from_response(response(401, body), operation="epayment.get_payment")
    assert type(error) is VippsAuthError
    assert error.detail is not None
    assert "invalid subscription key" in error.detail


def test_plain_text_401_maps_to_auth_error() -> None:
    error = error_from_response(response(401, text="Unauthorized"), operation="x")
    assert type(error) is VippsAuthError
    assert error.status == 401
    assert error.detail == "Unauthorized"


def test_html_403_maps_without_copying_the_page() -> None:
    page = "<html><body><h1>403 Forbidden</h1><p>ref 4791234567</p></body></html>"
    error = error_from_response(
        response(403, text=page, **{"Content-Type": "text/html"}), operation="x"
    )
    assert type(error) is VippsAuthError
    assert error.detail is None
    assert "<html>" not in str(error)


def test_plain_text_429_with_retry_after() -> None:
    error = error_from_response(
        response(
            429, text="Rate limit is exceeded. Try again in 2 seconds.", **{"Retry-After": "2"}
        ),
        operation="x",
    )
    assert type(error) is VippsUnavailable
    assert error.retry_after == 2.0


@pytest.mark.parametrize("status", [423, 500, 502, 503, 504])
def test_retryable_statuses(status: int) -> None:
    error = error_from_response(response(status, text=""), operation="x")
    assert type(error) is VippsUnavailable
    assert error.retry_after is None


def test_unknown_4xx_is_a_rejection() -> None:
    assert type(error_from_response(response(422, text="nope"), operation="x")) is VippsRejected


def test_invalid_json_labelled_problem_json() -> None:
    bad = httpx.Response(
        400, content=b"{not json", headers={"Content-Type": "application/problem+json"}
    )
    error = error_from_response(bad, operation="x")
    assert type(error) is VippsRejected
    assert error.title == "Bad Request"


def test_oauth_error_body() -> None:
    body = {"error": "invalid_grant", "error_description": "auth_req_id is unknown"}
    error = error_from_response(response(400, body), operation="login.ciba_token")
    assert error.oauth_error == "invalid_grant"
    assert error.error_code == "invalid_grant"
    assert error.detail == "auth_req_id is unknown"


def test_login_specific_error_code_wins_over_oauth_error() -> None:
    # REFERENCE.md §8.2: CIBA start reports e.g. error_code=old_app next to the OAuth error.
    body = {"error": "invalid_request", "error_code": "old_app"}
    error = error_from_response(response(400, body), operation="login.ciba_start")
    assert error.error_code == "old_app"
    assert error.oauth_error == "invalid_request"


def test_phone_numbers_and_tokens_never_reach_the_message() -> None:
    token = "wbA8ceVRKkoYiQAVELHeFCC3Sn5dtNCvvEtVPiOT77j6wx7uR965AG6Q+q0ATP4="
    body = problem(
        400, "Bad Request", f"User +47 912 34 567 / 4791234567 with token {token} not eligible"
    )
    error = error_from_response(response(400, body), operation="x")
    text = str(error) + repr(error.detail)
    assert "4791234567" not in text
    assert "912 34 567" not in text
    assert token not in text
    assert "<number>" in text
    assert "<redacted>" in text


def test_redact_keeps_short_numbers_and_codes() -> None:
    assert redact("Amount 49900 too high, code 6090") == "Amount 49900 too high, code 6090"
    assert redact(None) is None
    assert redact("x" * 1000) == "<redacted>"
    long_text = "word " * 200
    shortened = redact(long_text)
    assert shortened is not None
    assert len(shortened) <= 300


def test_retry_after_forms() -> None:
    now = datetime(2024, 6, 12, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("Wed, 12 Jun 2024 12:00:10 GMT", now=now) == 10.0
    assert parse_retry_after("Wed, 12 Jun 2024 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("-4") == 0.0
    for useless in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(useless) is None


def test_transport_errors_name_only_the_exception_type() -> None:
    request = httpx.Request("POST", "https://apitest.vipps.no/epayment/v1/payments?secret=1")
    exc = httpx.ReadTimeout("timed out reading https://apitest.vipps.no/?secret=1", request=request)
    unknown = error_from_transport(exc, operation="epayment.create_payment", outcome_unknown=True)
    assert type(unknown) is VippsOutcomeUnknown
    assert "secret" not in str(unknown)
    assert "ReadTimeout" in str(unknown)
    plain = error_from_transport(httpx.ConnectError("refused"), operation="x")
    assert type(plain) is VippsUnavailable


def test_outcome_unknown_keeps_the_last_answer() -> None:
    last = error_from_response(response(503, text="", **{"Retry-After": "4"}), operation="op")
    assert isinstance(last, VippsUnavailable)
    escalated = VippsOutcomeUnknown.after(last, "gave up")
    assert escalated.status == 503
    assert escalated.retry_after == 4.0
    assert escalated.operation == "op"


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "6280"), (423, "6250"), (400, "6250")],
)
def test_refusals_vipps_says_to_retry_are_retryable(status: int, code: str) -> None:
    """6280 "transient failure; retry with the same key" and 6250 "cannot cancel while the user
    is authorizing; retry later" (REFERENCE.md §7.5, §7.6): retried, not final refusals."""
    body = problem(status, "Bad Request", "try again", code=code)
    error = error_from_response(response(status, body), operation="epayment.capture_payment")
    assert type(error) is VippsUnavailable
    assert error.error_code == code


def test_a_documented_code_explains_a_bare_status_title() -> None:
    body = problem(400, "Bad Request", "Capture period expired for payment", code="6100")
    error = error_from_response(response(400, body), operation="epayment.capture_payment")
    assert type(error) is VippsRejected
    assert error.title is not None
    assert error.title.startswith("capture period expired")
    # An undocumented refusal keeps Vipps's own words.
    plain = problem(400, "Bad Request", "The refund period for this payment has ended")
    assert error_from_response(response(400, plain), operation="x").title == plain["detail"]
