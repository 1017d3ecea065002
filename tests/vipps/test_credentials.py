"""Keys per sales unit and partner keys at the wire: which keys each call carries.

* Each MSN's call carries that sales unit's subscription key and a token fetched with its keys;
  tokens are cached per key set, so two sales units never share one.
* An MSN no keys cover raises :class:`NoCredentials` before anything is sent.
* Partner keys on Login: the platform token as ``Bearer`` plus ``Merchant-Serial-Number``, never
  ``client_secret_basic`` (Login API, "Partner keys").
"""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest
import respx
from pydantic import SecretStr

from app.vipps.client import VippsClient
from app.vipps.credentials import Credentials, NoCredentials, StaticCredentials
from app.vipps.errors import VippsAuthError

from .conftest import BASE, MakeClient, token_body
from .test_client_login import CIBA_START, DISCOVERY, discovery_document

OSLO, BERGEN = "123456", "234567"
KEYS = {
    OSLO: Credentials(SecretStr("oslo-id"), SecretStr("oslo-secret"), SecretStr("oslo-sub")),
    BERGEN: Credentials(
        SecretStr("bergen-id"), SecretStr("bergen-secret"), SecretStr("bergen-sub")
    ),
}
PARTNER = Credentials(
    SecretStr("partner-id"), SecretStr("partner-secret"), SecretStr("partner-sub"), partner=True
)


class PerSalesUnit:
    """A provider like the service's: each MSN its own keys, none for others."""

    async def credentials_for(self, msn: str) -> Credentials:
        if msn not in KEYS:
            raise NoCredentials(msn)
        return KEYS[msn]


def _tokens_by_client(router: respx.MockRouter) -> respx.Route:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=token_body(f"token-of-{request.headers['client_id']}"))

    return router.post("/accesstoken/get").mock(side_effect=answer)


async def test_each_sales_unit_calls_with_its_own_keys_and_token(
    router: respx.MockRouter, make_client: MakeClient
) -> None:
    client = make_client(credentials=PerSalesUnit())
    tokens = _tokens_by_client(router)
    qrs = router.get("/qr/v1/merchant-callback").mock(return_value=httpx.Response(200, json=[]))
    for msn in (OSLO, BERGEN, OSLO, BERGEN):
        await client.list_callback_qrs(msn)
    seen = [
        (
            r.request.headers["Merchant-Serial-Number"],
            r.request.headers["Ocp-Apim-Subscription-Key"],
            r.request.headers["Authorization"],
        )
        for r in qrs.calls
    ]
    assert seen == [
        (OSLO, "oslo-sub", "Bearer token-of-oslo-id"),
        (BERGEN, "bergen-sub", "Bearer token-of-bergen-id"),
        (OSLO, "oslo-sub", "Bearer token-of-oslo-id"),
        (BERGEN, "bergen-sub", "Bearer token-of-bergen-id"),
    ]
    # One token per key set, each fetched with its own keys.
    fetched = [
        (r.request.headers["client_id"], r.request.headers["Ocp-Apim-Subscription-Key"])
        for r in tokens.calls
    ]
    assert fetched == [("oslo-id", "oslo-sub"), ("bergen-id", "bergen-sub")]


async def test_a_cold_cache_fetches_one_token_per_key_set_under_concurrency(
    router: respx.MockRouter, make_client: MakeClient
) -> None:
    client = make_client(credentials=PerSalesUnit())
    tokens = _tokens_by_client(router)
    router.get("/qr/v1/merchant-callback").mock(return_value=httpx.Response(200, json=[]))
    await asyncio.gather(*(client.list_callback_qrs(m) for m in [OSLO, BERGEN] * 10))
    assert sorted(r.request.headers["client_id"] for r in tokens.calls) == [
        "bergen-id",
        "oslo-id",
    ]


async def test_an_msn_without_keys_is_refused_before_anything_is_sent(
    make_client: MakeClient,
) -> None:
    client = make_client(credentials=PerSalesUnit())
    with respx.mock(base_url=BASE, assert_all_mocked=True, assert_all_called=False) as mock:
        with pytest.raises(NoCredentials) as caught:
            await client.list_callback_qrs("999999")
        assert mock.calls.call_count == 0
    assert isinstance(caught.value, VippsAuthError)  # handled like a 403 by callers
    assert caught.value.msn == "999999"


async def test_partner_keys_log_in_with_the_platform_token_and_the_msn(
    router: respx.MockRouter, make_client: MakeClient
) -> None:
    client = make_client(credentials=StaticCredentials(PARTNER))
    _tokens_by_client(router)
    router.get(DISCOVERY).mock(return_value=httpx.Response(200, json=discovery_document()))
    start = router.post(CIBA_START).mock(
        return_value=httpx.Response(200, json={"auth_req_id": "abc", "expires_in": 600})
    )
    await client.ciba_start(BERGEN, "urn:msisdn:4712345678", "openid")
    headers = start.calls.last.request.headers
    assert headers["Authorization"] == "Bearer token-of-partner-id"
    assert headers["Merchant-Serial-Number"] == BERGEN
    assert "Ocp-Apim-Subscription-Key" not in headers


async def test_sales_unit_keys_log_in_with_client_secret_basic(
    router: respx.MockRouter, make_client: MakeClient
) -> None:
    client = make_client(credentials=PerSalesUnit())
    router.get(DISCOVERY).mock(return_value=httpx.Response(200, json=discovery_document()))
    start = router.post(CIBA_START).mock(
        return_value=httpx.Response(200, json={"auth_req_id": "abc", "expires_in": 600})
    )
    await client.ciba_start(BERGEN, "urn:msisdn:4712345678", "openid")
    expected = "Basic " + base64.b64encode(b"bergen-id:bergen-secret").decode()
    assert start.calls.last.request.headers["Authorization"] == expected


def test_a_fingerprint_tells_key_sets_apart_and_reveals_none_of_them() -> None:
    oslo = KEYS[OSLO]
    assert oslo.fingerprint() != KEYS[BERGEN].fingerprint()
    rotated = Credentials(oslo.client_id, SecretStr("new-secret"), oslo.subscription_key)
    assert rotated.fingerprint() != oslo.fingerprint()
    assert len(oslo.fingerprint()) == 12
    for value in ("oslo-id", "oslo-secret", "oslo-sub"):
        assert value not in oslo.fingerprint()
        assert value not in repr(oslo)


async def test_static_keys_cover_the_listed_msns_only() -> None:
    keys = StaticCredentials(KEYS[OSLO], [OSLO])
    assert keys.covers(OSLO)
    assert not keys.covers(BERGEN)
    assert await keys.credentials_for(OSLO) is KEYS[OSLO]
    with pytest.raises(NoCredentials) as refused:
        await keys.credentials_for(BERGEN)
    assert refused.value.msn == BERGEN
    assert StaticCredentials(PARTNER).covers(BERGEN)


def test_a_client_needs_keys_or_a_provider(http: httpx.AsyncClient) -> None:
    with pytest.raises(ValueError, match="credentials"):
        VippsClient(http, base_url=BASE)
