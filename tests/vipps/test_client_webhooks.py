"""Webhooks API: register, list, delete, at the wire."""

from __future__ import annotations

import httpx
import pytest
import respx

from app.vipps.client import VippsClient
from app.vipps.errors import VippsOutcomeUnknown, VippsRejected

from .conftest import MSN, Recorder, assert_conforms, assert_platform_headers, canned

WEBHOOKS = "/webhooks/v1/webhooks"
WEBHOOK_ID = "5f2b5a4e-3f0c-4c59-9d8e-8b9a9f2a1c11"
URL = "https://pos.example.com/vipps/webhooks/123456"
EVENTS = [
    "user.checked-in.v1",
    "epayments.payment.authorized.v1",
    "epayments.payment.aborted.v1",
    "epayments.payment.expired.v1",
    "epayments.payment.cancelled.v1",
    "epayments.payment.captured.v1",
    "epayments.payment.refunded.v1",
    "epayments.payment.terminated.v1",
]
SECRET = "090a478d-37ff-4e77-970e-d457aeb4d0e0"


async def test_register_webhook(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    route = router.post(WEBHOOKS).mock(
        return_value=canned("POST", WEBHOOKS, 201, {"id": WEBHOOK_ID, "secret": SECRET})
    )
    registration = await client.register_webhook(MSN, URL, EVENTS)
    request = route.calls.last.request
    assert_platform_headers(request)
    assert assert_conforms(request) == {"url": URL, "events": EVENTS}
    assert registration.id == WEBHOOK_ID
    assert registration.secret.get_secret_value() == SECRET
    assert SECRET not in repr(registration)


async def test_register_rejected_by_vipps(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    # Webhooks ProblemDetails has no `title` and forbids unknown properties.
    body = {
        "type": "https://developer.vippsmobilepay.com/docs/APIs/webhooks-api/",
        "status": 400,
        "detail": "Only one registration for user.checked-in.v1 per sales unit",
        "instance": "/webhooks/v1/webhooks",
        "traceId": "00-9d1f-01",
        "extraDetails": [{"name": "events", "reason": "limit reached"}],
    }
    router.post(WEBHOOKS).mock(
        return_value=canned("POST", WEBHOOKS, 400, body, content_type="application/problem+json")
    )
    with pytest.raises(VippsRejected) as caught:
        await client.register_webhook(MSN, URL, EVENTS)
    assert caught.value.invalid_params[0].name == "events"
    assert caught.value.trace_id == "00-9d1f-01"


async def test_register_is_not_repeated_once_it_may_have_arrived(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient, recorder: Recorder
) -> None:
    # No idempotency key: a second POST could register twice. The caller lists instead.
    route = router.post(WEBHOOKS).mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(VippsOutcomeUnknown):
        await client.register_webhook(MSN, URL, EVENTS)
    assert route.call_count == 1
    assert recorder.sleeps == []


async def test_register_is_retried_when_it_never_left(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    ok = canned("POST", WEBHOOKS, 201, {"id": WEBHOOK_ID, "secret": SECRET})
    route = router.post(WEBHOOKS).mock(side_effect=[httpx.ConnectError("refused"), ok])
    registration = await client.register_webhook(MSN, URL, EVENTS)
    assert registration.id == WEBHOOK_ID
    assert route.call_count == 2


async def test_list_webhooks(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    body = {"webhooks": [{"id": WEBHOOK_ID, "url": URL, "events": EVENTS}]}
    route = router.get(WEBHOOKS).mock(return_value=canned("GET", WEBHOOKS, 200, body))
    webhooks = await client.list_webhooks(MSN)
    assert_platform_headers(route.calls.last.request)
    assert route.calls.last.request.content == b""
    assert [(w.id, w.url, w.events) for w in webhooks] == [(WEBHOOK_ID, URL, EVENTS)]


async def test_delete_webhook(
    router: respx.MockRouter, token_route: respx.Route, client: VippsClient
) -> None:
    path = f"{WEBHOOKS}/{WEBHOOK_ID}"
    route = router.delete(path).mock(return_value=canned("DELETE", path, 204))
    await client.delete_webhook(MSN, WEBHOOK_ID)
    assert_platform_headers(route.calls.last.request)
