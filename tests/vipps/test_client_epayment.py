"""ePayment API: create, read, capture, cancel, refund and force approve, at the wire."""

from __future__ import annotations

import httpx
import pytest
import respx

from app.vipps.client import VippsClient
from app.vipps.errors import VippsConflict, VippsRejected, VippsUnexpectedResponse
from app.vipps.schemas import Amount

from .bodies import CUSTOMER_TOKEN, modification, payment, payment_request
from .conftest import (
    MSN,
    REFERENCE,
    Recorder,
    amount,
    assert_conforms,
    assert_platform_headers,
    canned,
    problem,
)

PAYMENTS = "/epayment/v1/payments"
PAYMENT = f"{PAYMENTS}/{REFERENCE}"
KEY = "s123-pos2-0042-capture-1"


async def test_create_payment(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    route = router.post(PAYMENTS).mock(
        return_value=canned("POST", PAYMENTS, 201, {"reference": REFERENCE})
    )
    result = await client.create_payment(MSN, payment_request(), "create-key-1")
    request = route.calls.last.request
    assert_platform_headers(request, idempotency_key="create-key-1")
    # taxRate needs the current receipt schema (see test_schemas for the 2.3.24 difference).
    body = assert_conforms(request, order_management="latest")
    assert body["customer"] == {"customerToken": CUSTOMER_TOKEN}
    assert body["customerInteraction"] == "CUSTOMER_PRESENT"
    assert body["userFlow"] == "PUSH_MESSAGE"
    assert result.reference == REFERENCE
    assert result.redirect_url is None  # PUSH_MESSAGE has no landing page


async def test_create_payment_with_redirect_url(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    answer = {"reference": REFERENCE, "redirectUrl": "https://landing.vipps.no?token=abc123"}
    router.post(PAYMENTS).mock(return_value=canned("POST", PAYMENTS, 201, answer))
    request = payment_request(user_flow="WEB_REDIRECT", return_url="https://pos.example/r")
    result = await client.create_payment(MSN, request, "create-key-1")
    assert result.redirect_url == "https://landing.vipps.no?token=abc123"


async def test_reference_already_used_is_a_conflict_and_not_retried(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient, recorder: Recorder
) -> None:
    body = problem(409, "Conflict", "Reference already exists", code="4150")
    route = router.post(PAYMENTS).mock(return_value=canned("POST", PAYMENTS, 409, body))
    with pytest.raises(VippsConflict) as caught:
        await client.create_payment(MSN, payment_request(), "create-key-1")
    assert caught.value.error_code == "4150"
    assert route.call_count == 1
    assert recorder.sleeps == []
    assert recorder.statuses("epayment.create_payment") == [409]
    assert recorder.calls[-1][3] == "4150"


@pytest.mark.parametrize("key", ["", "k" * 51, "has\nnewline"])
async def test_idempotency_key_is_checked_before_sending(
    router: respx.MockRouter, client: VippsClient, key: str
) -> None:
    with pytest.raises(ValueError, match="Idempotency-Key"):
        await client.create_payment(MSN, payment_request(), key)


async def test_get_payment(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    route = router.get(PAYMENT).mock(return_value=canned("GET", PAYMENT, 200, payment()))
    result = await client.get_payment(MSN, REFERENCE)
    request = route.calls.last.request
    assert_platform_headers(request)
    assert request.content == b""
    assert result.state == "AUTHORIZED"
    assert result.aggregate.authorized_amount == Amount(currency="NOK", value=10000)
    assert result.metadata == {"till": "pos-2"}


async def test_get_payment_events(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    path = f"{PAYMENT}/events"
    events = [
        {
            "reference": REFERENCE,
            "pspReference": "psp-created",
            "name": "CREATED",
            "amount": amount(),
            "timestamp": "2024-06-12T10:00:00Z",
            "idempotencyKey": "create-key-1",
            "success": True,
        },
        {
            "reference": REFERENCE,
            "pspReference": "psp-authorized",
            "name": "AUTHORIZED",
            "amount": amount(),
            "timestamp": "2024-06-12T10:00:20.123Z",
            "idempotencyKey": None,
            "success": True,
        },
    ]
    # ePayment 1.4.1's PaymentEvent lists `paymentAction` as required but never defines it;
    # the documented field is `name` (REFERENCE.md §7.3). That is the only violation allowed.
    answer = canned(
        "GET", path, 200, events, known_violation="'paymentAction' is a required property"
    )
    route = router.get(path).mock(return_value=answer)
    result = await client.get_payment_events(MSN, REFERENCE)
    assert_platform_headers(route.calls.last.request)
    assert [e.name for e in result] == ["CREATED", "AUTHORIZED"]
    assert result[1].idempotency_key is None
    assert result[1].success


async def test_capture_payment(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    path = f"{PAYMENT}/capture"
    answer = canned(
        "POST", path, 200, modification(captured=10000),
        content_type="application/problem+json",
    )  # fmt: skip
    route = router.post(path).mock(return_value=answer)
    result = await client.capture_payment(MSN, REFERENCE, Amount(currency="NOK", value=10000), KEY)
    request = route.calls.last.request
    assert_platform_headers(request, idempotency_key=KEY)
    assert assert_conforms(request) == {"modificationAmount": {"currency": "NOK", "value": 10000}}
    # The spec labels the 200 application/problem+json; it is parsed by its body.
    assert result.aggregate.captured_amount.value == 10000
    assert result.state == "AUTHORIZED"


async def test_capture_before_authorization_is_rejected_with_its_code(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient, recorder: Recorder
) -> None:
    path = f"{PAYMENT}/capture"
    body = problem(400, "Bad Request", "Payment is not authorized", code="6080")
    route = router.post(path).mock(
        return_value=canned("POST", path, 400, body, content_type="application/problem+json")
    )
    with pytest.raises(VippsRejected) as caught:
        await client.capture_payment(MSN, REFERENCE, Amount(currency="NOK", value=10000), KEY)
    assert caught.value.error_code == "6080"
    assert caught.value.trace_id == "f3b7c0a2-trace"
    assert route.call_count == 1
    assert recorder.sleeps == []


async def test_cancel_payment_without_body(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    path = f"{PAYMENT}/cancel"
    answer = canned("POST", path, 200, modification("TERMINATED", cancelled=10000))
    route = router.post(path).mock(return_value=answer)
    result = await client.cancel_payment(MSN, REFERENCE, "cancel-key-1")
    request = route.calls.last.request
    assert_platform_headers(request, idempotency_key="cancel-key-1")
    assert request.content == b""
    assert assert_conforms(request) is None
    assert result.state == "TERMINATED"
    assert result.aggregate.cancelled_amount.value == 10000


async def test_cancel_transaction_only_sends_the_flag(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    path = f"{PAYMENT}/cancel"
    answer = canned("POST", path, 200, modification("TERMINATED", cancelled=10000))
    route = router.post(path).mock(return_value=answer)
    await client.cancel_payment(MSN, REFERENCE, "cancel-key-1", cancel_transaction_only=True)
    request = route.calls.last.request
    assert_platform_headers(request, idempotency_key="cancel-key-1")
    # ePayment 1.4.1 defines no cancel body; the later API takes {"cancelTransactionOnly": true}
    # (REFERENCE.md §7.6) so a concurrent approval is never silently released. The spec's one
    # objection, "no JSON body", is the only one allowed.
    body = assert_conforms(request, known_violation="the spec defines no JSON body")
    assert body == {"cancelTransactionOnly": True}


async def test_cancel_after_authorization_reports_error_6060(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    path = f"{PAYMENT}/cancel"
    body = problem(400, "Bad Request", "Payment already authorized", code="6060")
    router.post(path).mock(return_value=canned("POST", path, 400, body))
    with pytest.raises(VippsRejected) as caught:
        await client.cancel_payment(MSN, REFERENCE, "cancel-key-1", cancel_transaction_only=True)
    assert caught.value.error_code == "6060"


async def test_refund_payment(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    path = f"{PAYMENT}/refund"
    answer = canned("POST", path, 200, modification(captured=10000, refunded=2500))
    route = router.post(path).mock(return_value=answer)
    result = await client.refund_payment(
        MSN, REFERENCE, Amount(currency="NOK", value=2500), "refund-key-1"
    )
    request = route.calls.last.request
    assert_platform_headers(request, idempotency_key="refund-key-1")
    assert assert_conforms(request) == {"modificationAmount": {"currency": "NOK", "value": 2500}}
    assert result.aggregate.refunded_amount.value == 2500


async def test_force_approve_payment(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    path = f"/epayment/v1/test/payments/{REFERENCE}/approve"
    route = router.post(path).mock(return_value=canned("POST", path, 200))
    await client.force_approve_payment(MSN, REFERENCE, "4791234567")
    request = route.calls.last.request
    assert_platform_headers(request)  # no Idempotency-Key: the endpoint takes none
    assert assert_conforms(request) == {"customer": {"phoneNumber": "4791234567"}}


async def test_force_approve_rejects_a_malformed_phone_number_before_sending(
    router: respx.MockRouter, client: VippsClient
) -> None:
    with pytest.raises(ValueError, match="10-15 digits") as caught:
        await client.force_approve_payment(MSN, REFERENCE, "+47 912 34 567")
    assert "912 34 567" not in str(caught.value)


async def test_answer_of_another_shape_is_an_unexpected_response(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    # Deliberately outside the spec: a state this client does not know.
    router.get(PAYMENT).mock(return_value=httpx.Response(200, json={**payment(), "state": "NEW"}))
    with pytest.raises(VippsUnexpectedResponse) as caught:
        await client.get_payment(MSN, REFERENCE)
    assert caught.value.status == 200
