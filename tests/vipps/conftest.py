"""Shared fixtures for the Vipps client tests: a strict respx router and canned, spec-checked
answers.

Every route is mocked strictly (``assert_all_called`` and ``assert_all_mocked``): a request the
test did not expect fails, and so does an expected one that never happened.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr

from app.simulator.conformance import (
    SpecViolation,
    find_operation,
    validate_request,
    validate_response,
)
from app.vipps.client import RetryPolicy, SystemInfo, VippsClient

BASE = "https://apitest.vipps.no"
MSN = "123456"
CLIENT_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
CLIENT_SECRET = "client-secret-value-Xy9"
SUBSCRIPTION_KEY = "subscription-key-0123456789abcdef"
REFERENCE = "s123-pos2-20240612-0042"
IDEMPOTENCY_KEY = "s123-pos2-20240612-0042-create"
NOW = 1_700_000_000.0
TOKEN_TYPE = "application/json;charset=UTF-8"
SYSTEM = SystemInfo(
    name="vipps-pos", version="1.2.3", plugin_name="vipps-pos-callback-qr", plugin_version="1.2.3"
)


def token_body(token: str = "token-1", *, lifetime: int = 3600, now: float = NOW) -> dict[str, str]:
    """An access-token answer as Vipps sends it: every number is a string."""
    return {
        "token_type": "Bearer",
        "expires_in": str(lifetime),
        "ext_expires_in": str(lifetime),
        "expires_on": str(int(now) + lifetime),
        "not_before": str(int(now)),
        "resource": "00000002-0000-0000-c000-000000000000",
        "access_token": token,
    }


def expect_only(violation: str, check: Callable[[], object]) -> None:
    """``check`` fails validation, and every problem it reports is the known ``violation``.

    Used where the official spec and REFERENCE.md disagree; each caller says why.
    """
    with pytest.raises(SpecViolation) as caught:
        check()
    problems = str(caught.value).split(": ", 1)[1].split("; ")
    assert problems, caught.value
    assert all(violation in problem for problem in problems), caught.value


def token_answer(
    token: str = "token-1", *, lifetime: int = 3600, now: float = NOW
) -> httpx.Response:
    return canned(
        "POST",
        "/accesstoken/get",
        200,
        token_body(token, lifetime=lifetime, now=now),
        content_type=TOKEN_TYPE,
    )


def canned(
    method: str,
    path: str,
    status: int,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
    known_violation: str | None = None,
) -> httpx.Response:
    """A response the tests feed the client, checked against the official spec first."""
    if known_violation is None:
        validate_response(method, path, status, body)
    else:
        expect_only(known_violation, lambda: validate_response(method, path, status, body))
    if body is None:
        return httpx.Response(status, headers=headers)
    return httpx.Response(
        status,
        content=json.dumps(body).encode(),
        headers={"Content-Type": content_type, **(headers or {})},
    )


def gateway(
    method: str,
    path: str,
    status: int,
    text: str = "",
    *,
    headers: dict[str, str] | None = None,
    content_type: str = "text/plain",
) -> httpx.Response:
    """An answer from the API gateway rather than the API: 5xx, 423, 429, Azure APIM 401/403.

    These are not JSON of any documented schema, so there is nothing to validate the body
    against. The spec documents most of these statuses not at all (REFERENCE.md §1 lists them
    from the docs); the check here is that the operation itself is a real one.
    """
    operation = find_operation(method, path)
    assert operation is not None, f"{method} {path} is not in any official spec"
    return httpx.Response(
        status, content=text.encode(), headers={"Content-Type": content_type, **(headers or {})}
    )


def wire_body(request: httpx.Request) -> Any:
    return json.loads(request.content) if request.content else None


def assert_conforms(
    request: httpx.Request, *, known_violation: str | None = None, **kwargs: Any
) -> Any:
    """The request the client sent matches the official spec; returns its JSON body."""
    body = wire_body(request)
    if known_violation is None:
        validate_request(request.method, request.url.path, body, **kwargs)
    else:
        expect_only(
            known_violation,
            lambda: validate_request(request.method, request.url.path, body, **kwargs),
        )
    return body


def assert_platform_headers(
    request: httpx.Request,
    *,
    msn: str = MSN,
    token: str = "token-1",
    idempotency_key: str | None = None,
) -> None:
    headers = request.headers
    assert headers["Authorization"] == f"Bearer {token}"
    assert headers["Ocp-Apim-Subscription-Key"] == SUBSCRIPTION_KEY
    assert headers["Merchant-Serial-Number"] == msn
    assert headers["Vipps-System-Name"] == "vipps-pos"
    assert headers["Vipps-System-Version"] == "1.2.3"
    assert headers["Vipps-System-Plugin-Name"] == "vipps-pos-callback-qr"
    assert headers["Vipps-System-Plugin-Version"] == "1.2.3"
    if request.content:
        assert headers["Content-Type"] == "application/json"
    else:
        assert "Content-Type" not in headers
    if idempotency_key is None:
        assert "Idempotency-Key" not in headers
    else:
        assert headers["Idempotency-Key"] == idempotency_key
    # Login credentials never travel on platform calls.
    assert "client_secret" not in headers


@dataclass
class Recorder:
    """Injected ``sleep`` and ``on_call`` hook: what the client waited and reported."""

    sleeps: list[float] = field(default_factory=list)
    calls: list[tuple[str, int | None, float, str | None]] = field(default_factory=list)
    now: float = NOW

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def on_call(self, operation: str, status: int | None, seconds: float, code: str | None) -> None:
        self.calls.append((operation, status, seconds, code))

    def clock(self) -> float:
        return self.now

    def statuses(self, operation: str) -> list[int | None]:
        return [status for op, status, _, _ in self.calls if op == operation]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def router() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(base_url=BASE, assert_all_called=True, assert_all_mocked=True) as mock:
        yield mock


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


MakeClient = Callable[..., VippsClient]


@pytest.fixture
def make_client(http: httpx.AsyncClient, recorder: Recorder) -> MakeClient:
    def build(*, max_retries: int = 3, max_retry_after: float = 30.0, **kwargs: Any) -> VippsClient:
        retry = RetryPolicy(
            max_retries=max_retries,
            base_backoff=0.25,
            max_backoff=5.0,
            max_retry_after=max_retry_after,
            sleep=recorder.sleep,
            random=lambda: 0.5,
        )
        options: dict[str, Any] = {
            "base_url": BASE,
            "client_id": SecretStr(CLIENT_ID),
            "client_secret": SecretStr(CLIENT_SECRET),
            "subscription_key": SecretStr(SUBSCRIPTION_KEY),
            "system": SYSTEM,
            "retry": retry,
            "on_call": recorder.on_call,
            "clock": recorder.clock,
        }
        options.update(kwargs)
        return VippsClient(http, **options)

    return build


@pytest.fixture
def client(make_client: MakeClient) -> VippsClient:
    return make_client()


@pytest.fixture
def token_route(router: respx.MockRouter) -> respx.Route:
    """The access-token endpoint answering one valid token; checks what the client sends."""

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["client_id"] == CLIENT_ID
        assert request.headers["client_secret"] == CLIENT_SECRET
        assert request.headers["Ocp-Apim-Subscription-Key"] == SUBSCRIPTION_KEY
        assert request.headers["Vipps-System-Name"] == "vipps-pos"
        assert request.content == b""  # REFERENCE.md §2: the body is empty
        validate_request("POST", request.url.path, None)
        return token_answer()

    return router.post("/accesstoken/get").mock(side_effect=answer)


def amount(value: int = 10000, currency: str = "NOK") -> dict[str, Any]:
    return {"currency": currency, "value": value}


def aggregate(
    authorized: int = 10000, cancelled: int = 0, captured: int = 0, refunded: int = 0
) -> dict[str, Any]:
    return {
        "authorizedAmount": amount(authorized),
        "cancelledAmount": amount(cancelled),
        "capturedAmount": amount(captured),
        "refundedAmount": amount(refunded),
    }


def problem(status: int, title: str, detail: str, code: str | None = None) -> dict[str, Any]:
    """An ePayment RFC 7807 problem with the numeric code in ``extraDetails``."""
    body: dict[str, Any] = {
        "type": "https://developer.vippsmobilepay.com/docs/APIs/epayment-api/api-guide/errors",
        "title": title,
        "detail": detail,
        "status": status,
        "traceId": "f3b7c0a2-trace",
        "instance": "/epayment/v1/payments",
    }
    if code is not None:
        body["extraDetails"] = [{"name": "ErrorCode", "reason": code}]
    return body
