"""Retries, token refresh on 401, metrics hook and log hygiene of the Vipps client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx
import pytest
import respx
from pydantic import SecretStr

from app.settings import VippsSettings
from app.vipps.client import RetryPolicy, SystemInfo, VippsClient
from app.vipps.errors import (
    VippsAuthError,
    VippsConflict,
    VippsOutcomeUnknown,
    VippsRejected,
    VippsUnavailable,
)

from .bodies import CUSTOMER_TOKEN, payment, payment_request
from .conftest import (
    CLIENT_SECRET,
    MSN,
    REFERENCE,
    SUBSCRIPTION_KEY,
    MakeClient,
    Recorder,
    assert_conforms,
    assert_platform_headers,
    canned,
    gateway,
    problem,
    token_answer,
)

PAYMENTS = "/epayment/v1/payments"
PAYMENT = f"{PAYMENTS}/{REFERENCE}"
KEY = "s123-pos2-0042-create"
# RetryPolicy(base_backoff=0.25, random=0.5): retry n waits 0.75 * min(5, 0.25 * 2**n).
FIRST_BACKOFF = 0.1875


def created() -> httpx.Response:
    return canned("POST", PAYMENTS, 201, {"reference": REFERENCE})


Failure = Callable[[], httpx.Response | Exception]

FAILURES: dict[str, Failure] = {
    "500": lambda: gateway("POST", PAYMENTS, 500, "Internal Server Error"),
    "502": lambda: gateway(
        "POST", PAYMENTS, 502, "<html>Bad Gateway</html>", content_type="text/html"
    ),
    "503": lambda: gateway("POST", PAYMENTS, 503, "Service Unavailable"),
    # 423 is not in ePayment 1.4.1; the docs describe it as a problem body (REFERENCE.md §1).
    "423": lambda: httpx.Response(
        423, json=problem(423, "Locked", "Payment is being processed", code="6250")
    ),
    "429": lambda: gateway(
        "POST", PAYMENTS, 429, "Rate limit is exceeded.", headers={"Retry-After": "7"}
    ),
    "connect error": lambda: httpx.ConnectError("connection refused"),
    "connect timeout": lambda: httpx.ConnectTimeout("connect timed out"),
    "read timeout": lambda: httpx.ReadTimeout("read timed out"),
    "dropped connection": lambda: httpx.RemoteProtocolError("peer closed connection"),
}


@pytest.mark.parametrize("failure", list(FAILURES))
async def test_create_is_retried_with_the_same_key_and_body(
    router: respx.MockRouter,
    token_route: respx.Route,
    client: VippsClient,
    recorder: Recorder,
    failure: str,
) -> None:
    route = router.post(PAYMENTS).mock(side_effect=[FAILURES[failure](), created()])
    result = await client.create_payment(MSN, payment_request(), KEY)
    assert result.reference == REFERENCE
    assert route.call_count == 2
    first, second = (call.request for call in route.calls)
    for request in (first, second):
        assert_platform_headers(request, idempotency_key=KEY)
        assert_conforms(request)
    # Byte-identical body and the caller's key on every attempt: that makes the retry safe.
    assert first.content == second.content
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"] == KEY
    assert recorder.sleeps == ([7.0] if failure == "429" else [FIRST_BACKOFF])
    assert token_route.call_count == 1


@pytest.mark.parametrize(
    ("status", "error"), [(400, VippsRejected), (403, VippsAuthError), (409, VippsConflict)]
)
async def test_business_errors_are_never_retried(
    router: respx.MockRouter,
    token_route: respx.Route,
    client: VippsClient,
    recorder: Recorder,
    status: int,
    error: type[Exception],
) -> None:
    body = problem(status, "Refused", "Not allowed", code="5080")
    route = router.post(PAYMENTS).mock(return_value=canned("POST", PAYMENTS, status, body))
    with pytest.raises(error) as caught:
        await client.create_payment(MSN, payment_request(), KEY)
    assert type(caught.value) is error
    assert route.call_count == 1
    assert recorder.sleeps == []


async def test_retries_are_bounded_and_end_in_outcome_unknown_for_create(
    router: respx.MockRouter, token_route: respx.Route, make_client: MakeClient, recorder: Recorder
) -> None:
    client = make_client(max_retries=2)
    route = router.post(PAYMENTS).mock(
        side_effect=[gateway("POST", PAYMENTS, 503) for _ in range(3)]
    )
    with pytest.raises(VippsOutcomeUnknown) as caught:
        await client.create_payment(MSN, payment_request(), KEY)
    # A 5xx may come after the payment was created: GET before deciding.
    assert caught.value.status == 503
    assert route.call_count == 3
    assert recorder.sleeps == [0.1875, 0.375]
    assert len({call.request.content for call in route.calls}) == 1


async def test_bounded_retries_of_a_read_end_in_unavailable(
    router: respx.MockRouter, token_route: respx.Route, make_client: MakeClient, recorder: Recorder
) -> None:
    client = make_client(max_retries=3)
    route = router.get(PAYMENT).mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(VippsUnavailable) as caught:
        await client.get_payment(MSN, REFERENCE)
    assert type(caught.value) is VippsUnavailable
    assert route.call_count == 4
    assert recorder.sleeps == [0.1875, 0.375, 0.75]


async def test_create_that_never_left_ends_in_plain_unavailable(
    router: respx.MockRouter, token_route: respx.Route, make_client: MakeClient
) -> None:
    client = make_client(max_retries=1)
    route = router.post(PAYMENTS).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(VippsUnavailable) as caught:
        await client.create_payment(MSN, payment_request(), KEY)
    assert type(caught.value) is VippsUnavailable  # nothing reached Vipps: no GET needed
    assert route.call_count == 2


async def test_one_uncertain_attempt_makes_the_whole_call_uncertain(
    router: respx.MockRouter, token_route: respx.Route, make_client: MakeClient
) -> None:
    client = make_client(max_retries=2)
    router.post(PAYMENTS).mock(
        side_effect=[
            httpx.ReadTimeout("slow"),
            httpx.ConnectError("refused"),
            gateway("POST", PAYMENTS, 429, "Rate limit is exceeded."),
        ]
    )
    with pytest.raises(VippsOutcomeUnknown) as caught:
        await client.create_payment(MSN, payment_request(), KEY)
    assert caught.value.status == 429


async def test_backoff_is_capped(
    router: respx.MockRouter, token_route: respx.Route, make_client: MakeClient, recorder: Recorder
) -> None:
    client = make_client(max_retries=8)
    router.get(PAYMENT).mock(
        side_effect=[gateway("GET", PAYMENT, 502) for _ in range(8)]
        + [canned("GET", PAYMENT, 200, payment())]
    )
    await client.get_payment(MSN, REFERENCE)
    assert recorder.sleeps[-1] == 0.75 * 5.0
    assert max(recorder.sleeps) == 0.75 * 5.0
    assert recorder.sleeps == sorted(recorder.sleeps)


def test_jitter_spreads_between_half_and_all_of_the_ceiling() -> None:
    low = RetryPolicy(base_backoff=1.0, max_backoff=10.0, random=lambda: 0.0)
    high = RetryPolicy(base_backoff=1.0, max_backoff=10.0, random=lambda: 1.0)
    assert (low.delay(2, None), high.delay(2, None)) == (2.0, 4.0)
    assert (low.delay(10, None), high.delay(10, None)) == (5.0, 10.0)
    assert low.delay(0, retry_after=12.5) == 12.5
    assert low.delay(0, retry_after=31.0) is None


async def test_long_retry_after_is_handed_to_the_caller(
    router: respx.MockRouter, token_route: respx.Route, make_client: MakeClient, recorder: Recorder
) -> None:
    client = make_client(max_retry_after=30.0)
    route = router.get(PAYMENT).mock(
        return_value=gateway("GET", PAYMENT, 429, "Slow down", headers={"Retry-After": "120"})
    )
    with pytest.raises(VippsUnavailable) as caught:
        await client.get_payment(MSN, REFERENCE)
    assert caught.value.retry_after == 120.0
    assert route.call_count == 1
    assert recorder.sleeps == []


async def test_token_endpoint_outage_is_retried_within_the_call(
    router: respx.MockRouter, client: VippsClient, recorder: Recorder
) -> None:
    tokens = router.post("/accesstoken/get").mock(
        side_effect=[
            httpx.Response(500),
            token_answer(),
        ]
    )
    route = router.get(PAYMENT).mock(return_value=canned("GET", PAYMENT, 200, payment()))
    await client.get_payment(MSN, REFERENCE)
    assert tokens.call_count == 2
    assert route.call_count == 1
    assert recorder.sleeps == [FIRST_BACKOFF]


async def test_401_refreshes_the_token_and_retries_once(
    router: respx.MockRouter, client: VippsClient, recorder: Recorder
) -> None:
    tokens = router.post("/accesstoken/get").mock(
        side_effect=[
            token_answer("token-1"),
            token_answer("token-2"),
        ]
    )
    route = router.post(PAYMENTS).mock(
        side_effect=[gateway("POST", PAYMENTS, 401, "Unauthorized"), created()]
    )
    await client.create_payment(MSN, payment_request(), KEY)
    first, second = (call.request for call in route.calls)
    assert_platform_headers(first, token="token-1", idempotency_key=KEY)
    assert_platform_headers(second, token="token-2", idempotency_key=KEY)
    assert first.content == second.content
    assert tokens.call_count == 2
    assert recorder.sleeps == []  # not a retry of a failure: a fresh credential


async def test_second_401_is_an_auth_error(router: respx.MockRouter, client: VippsClient) -> None:
    tokens = router.post("/accesstoken/get").mock(
        side_effect=[
            token_answer("token-1"),
            token_answer("token-2"),
        ]
    )
    apim = {"statusCode": 401, "message": "Access denied due to invalid subscription key."}
    route = router.get(PAYMENT).mock(return_value=httpx.Response(401, json=apim))
    with pytest.raises(VippsAuthError) as caught:
        await client.get_payment(MSN, REFERENCE)
    assert caught.value.detail == "Access denied due to invalid subscription key."
    assert route.call_count == 2
    assert tokens.call_count == 2


async def test_hundred_concurrent_calls_share_one_token_fetch(
    router: respx.MockRouter, client: VippsClient
) -> None:
    async def slow_token(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.02)
        return token_answer()

    tokens = router.post("/accesstoken/get").mock(side_effect=slow_token)
    route = router.get(PAYMENT).mock(return_value=canned("GET", PAYMENT, 200, payment()))
    results = await asyncio.gather(*(client.get_payment(MSN, REFERENCE) for _ in range(100)))
    assert tokens.call_count == 1
    assert route.call_count == 100
    assert {r.reference for r in results} == {REFERENCE}


async def test_on_call_reports_every_attempt(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient, recorder: Recorder
) -> None:
    router.post(PAYMENTS).mock(
        side_effect=[
            httpx.ReadTimeout("slow"),
            httpx.Response(423, json=problem(423, "Locked", "Busy", code="6250")),
            created(),
        ]
    )
    await client.create_payment(MSN, payment_request(), KEY)
    reported = [(op, status, code) for op, status, _, code in recorder.calls]
    assert reported == [
        ("accesstoken.get", 200, None),
        ("epayment.create_payment", None, None),
        ("epayment.create_payment", 423, "6250"),
        ("epayment.create_payment", 201, None),
    ]
    assert all(seconds >= 0 for _, _, seconds, _ in recorder.calls)


async def test_failing_metrics_hook_never_breaks_a_call(
    router: respx.MockRouter, token_route: respx.Route, make_client: MakeClient
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("metrics backend down")

    client = make_client(on_call=broken)
    router.get(PAYMENT).mock(return_value=canned("GET", PAYMENT, 200, payment()))
    assert (await client.get_payment(MSN, REFERENCE)).reference == REFERENCE


async def test_logs_and_errors_hold_no_secret_token_or_phone_number(
    router: respx.MockRouter,
    client: VippsClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    router.post("/accesstoken/get").mock(
        side_effect=[
            token_answer("eyJ-access-token-1"),
            token_answer("eyJ-access-token-2"),
        ]
    )
    detail = f"Customer 4791234567 with token {CUSTOMER_TOKEN} is not eligible"
    router.post(PAYMENTS).mock(
        side_effect=[
            httpx.Response(401, text="Unauthorized"),
            httpx.ReadTimeout("slow"),
            httpx.Response(400, json=problem(400, "Bad Request", detail, code="5080")),
        ]
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(VippsRejected) as caught:
        await client.create_payment(MSN, payment_request(), KEY)
    forbidden = [
        CLIENT_SECRET,
        SUBSCRIPTION_KEY,
        "eyJ-access-token-1",
        "eyJ-access-token-2",
        CUSTOMER_TOKEN,
        "4791234567",
    ]
    texts = [str(caught.value), repr(caught.value.__dict__)]
    for record in caplog.records:
        texts.append(record.getMessage())
        texts.append(repr(record.__dict__))
    assert any("vipps.call.retry" in text for text in texts)
    for text in texts:
        for secret in forbidden:
            assert secret not in text


async def test_system_headers_are_limited_to_30_characters() -> None:
    with pytest.raises(ValueError, match="Vipps-System-Plugin-Name"):
        SystemInfo(name="pos", version="1", plugin_name="p" * 31, plugin_version="1")
    with pytest.raises(ValueError, match="Vipps-System-Name"):
        SystemInfo(name="", version="1", plugin_name="p", plugin_version="1")


async def test_create_builds_an_owned_client_with_explicit_timeouts(
    router: respx.MockRouter, token_route: respx.Route
) -> None:
    settings = VippsSettings(
        base_url="https://apitest.vipps.no/",
        client_id=SecretStr("3fa85f64-5717-4562-b3fc-2c963f66afa6"),
        client_secret=SecretStr(CLIENT_SECRET),
        subscription_key=SecretStr(SUBSCRIPTION_KEY),
        system_name="vipps-pos",
        system_version="1.2.3",
        plugin_name="vipps-pos-callback-qr",
        plugin_version="1.2.3",
        connect_timeout_seconds=2.0,
        read_timeout_seconds=7.0,
        max_retries=1,
    )
    route = router.get(PAYMENT).mock(return_value=canned("GET", PAYMENT, 200, payment()))
    async with VippsClient.create(settings) as client:
        timeout = client._http.timeout
        assert (timeout.connect, timeout.read, timeout.pool) == (2.0, 7.0, 2.0)
        await client.get_payment(MSN, REFERENCE)
        assert_platform_headers(route.calls.last.request)
    assert client._http.is_closed


async def test_shared_http_client_is_left_open(
    http: httpx.AsyncClient, make_client: MakeClient
) -> None:
    client = make_client()
    await client.aclose()
    assert not http.is_closed
