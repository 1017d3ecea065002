"""Access tokens: one fetch at a time per credential set, refresh before expiry, invalidation."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import respx
from pydantic import SecretStr

from app.simulator.conformance import validate_response
from app.vipps.errors import VippsAuthError, VippsUnavailable, VippsUnexpectedResponse
from app.vipps.tokens import AccessTokenProvider, Credentials

from .conftest import (
    BASE,
    CLIENT_ID,
    CLIENT_SECRET,
    NOW,
    SUBSCRIPTION_KEY,
    Recorder,
    token_answer,
    token_body,
)

CREDENTIALS = Credentials(
    SecretStr(CLIENT_ID), SecretStr(CLIENT_SECRET), SecretStr(SUBSCRIPTION_KEY)
)


@pytest.fixture
def provider(http: httpx.AsyncClient, recorder: Recorder) -> AccessTokenProvider:
    return AccessTokenProvider(
        http,
        BASE,
        system_headers={"Vipps-System-Name": "vipps-pos"},
        refresh_margin=300,
        clock=recorder.clock,
        on_call=recorder.on_call,
    )


async def test_hundred_concurrent_callers_cause_exactly_one_fetch(
    router: respx.MockRouter, provider: AccessTokenProvider
) -> None:
    async def slow_token(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.02)  # keep the fetch in flight while the other 99 arrive
        return token_answer("token-1")

    route = router.post("/accesstoken/get").mock(side_effect=slow_token)
    tokens = await asyncio.gather(*(provider.get(CREDENTIALS) for _ in range(100)))
    assert route.call_count == 1
    assert {t.get_secret_value() for t in tokens} == {"token-1"}


async def test_fetch_sends_credentials_in_headers_and_an_empty_body(
    router: respx.MockRouter, provider: AccessTokenProvider, recorder: Recorder
) -> None:
    route = router.post("/accesstoken/get").mock(return_value=token_answer("token-1"))
    await provider.get(CREDENTIALS)
    request = route.calls.last.request
    assert request.headers["client_id"] == CLIENT_ID
    assert request.headers["client_secret"] == CLIENT_SECRET
    assert request.headers["Ocp-Apim-Subscription-Key"] == SUBSCRIPTION_KEY
    assert request.headers["Vipps-System-Name"] == "vipps-pos"
    assert "Authorization" not in request.headers
    assert request.content == b""
    assert recorder.statuses("accesstoken.get") == [200]


async def test_token_is_reused_then_refreshed_before_it_expires(
    router: respx.MockRouter, provider: AccessTokenProvider, recorder: Recorder
) -> None:
    later = NOW + 3300
    route = router.post("/accesstoken/get").mock(
        side_effect=[token_answer("token-1"), token_answer("token-2", now=later)]
    )
    assert (await provider.get(CREDENTIALS)).get_secret_value() == "token-1"
    recorder.now = NOW + 3299  # still more than the 300 s margin left
    assert (await provider.get(CREDENTIALS)).get_secret_value() == "token-1"
    assert route.call_count == 1
    recorder.now = later  # inside the margin: replaced although not yet expired
    assert (await provider.get(CREDENTIALS)).get_secret_value() == "token-2"
    assert route.call_count == 2


async def test_short_lived_token_is_refreshed_half_way(
    router: respx.MockRouter, provider: AccessTokenProvider, recorder: Recorder
) -> None:
    route = router.post("/accesstoken/get").mock(
        side_effect=[token_answer("token-1", lifetime=60), token_answer("token-2", lifetime=60)]
    )
    await provider.get(CREDENTIALS)
    recorder.now = NOW + 29
    await provider.get(CREDENTIALS)
    assert route.call_count == 1
    recorder.now = NOW + 30
    assert (await provider.get(CREDENTIALS)).get_secret_value() == "token-2"


async def test_expires_in_is_used_when_expires_on_is_missing_or_already_past(
    router: respx.MockRouter, provider: AccessTokenProvider, recorder: Recorder
) -> None:
    # Deliberately off-spec (the spec requires expires_on): lenience is what is tested here.
    skewed = {**token_body("token-1"), "expires_on": str(int(NOW) - 10)}
    missing = {k: v for k, v in token_body("token-2").items() if k != "expires_on"}
    route = router.post("/accesstoken/get").mock(
        side_effect=[httpx.Response(200, json=skewed), httpx.Response(200, json=missing)]
    )
    assert (await provider.get(CREDENTIALS)).get_secret_value() == "token-1"
    recorder.now = NOW + 3299
    assert (await provider.get(CREDENTIALS)).get_secret_value() == "token-1"
    recorder.now = NOW + 3300
    assert (await provider.get(CREDENTIALS)).get_secret_value() == "token-2"
    assert route.call_count == 2


async def test_a_token_without_a_usable_lifetime_lives_five_minutes(
    router: respx.MockRouter, provider: AccessTokenProvider, recorder: Recorder
) -> None:
    # Off-spec again: expires_on already past and no expires_in. The token is used, but for a
    # short fallback lifetime (300 s, refreshed half way), never forever.
    dateless = {
        **{k: v for k, v in token_body("token-1").items() if k != "expires_in"},
        "expires_on": str(int(NOW) - 10),
    }
    route = router.post("/accesstoken/get").mock(
        side_effect=[httpx.Response(200, json=dateless), token_answer("token-2")]
    )
    assert (await provider.get(CREDENTIALS)).get_secret_value() == "token-1"
    recorder.now = NOW + 140
    assert (await provider.get(CREDENTIALS)).get_secret_value() == "token-1"
    recorder.now = NOW + 160
    assert (await provider.get(CREDENTIALS)).get_secret_value() == "token-2"
    assert route.call_count == 2


async def test_each_credential_set_has_its_own_token(
    router: respx.MockRouter, provider: AccessTokenProvider
) -> None:
    other = Credentials(SecretStr(CLIENT_ID), SecretStr(CLIENT_SECRET), SecretStr("other-key"))
    route = router.post("/accesstoken/get").mock(
        side_effect=[token_answer("token-1"), token_answer("token-2")]
    )
    assert (await provider.get(CREDENTIALS)).get_secret_value() == "token-1"
    assert (await provider.get(other)).get_secret_value() == "token-2"
    assert (await provider.get(CREDENTIALS)).get_secret_value() == "token-1"
    assert route.call_count == 2
    assert route.calls[1].request.headers["Ocp-Apim-Subscription-Key"] == "other-key"


async def test_cache_key_never_holds_the_subscription_key() -> None:
    key = CREDENTIALS.cache_key(BASE)
    assert SUBSCRIPTION_KEY not in "".join(key)
    assert CLIENT_SECRET not in "".join(key)
    assert SUBSCRIPTION_KEY not in repr(CREDENTIALS)


async def test_invalidate_drops_only_the_token_that_failed(
    router: respx.MockRouter, provider: AccessTokenProvider
) -> None:
    route = router.post("/accesstoken/get").mock(
        side_effect=[token_answer("token-1"), token_answer("token-2")]
    )
    first = await provider.get(CREDENTIALS)
    assert provider.invalidate(CREDENTIALS, first)
    second = await provider.get(CREDENTIALS)
    assert second.get_secret_value() == "token-2"
    # A late 401 for the old token must not throw away the new one.
    assert not provider.invalidate(CREDENTIALS, first)
    assert (await provider.get(CREDENTIALS)).get_secret_value() == "token-2"
    assert route.call_count == 2


async def test_rejected_credentials_raise_auth_error(
    router: respx.MockRouter, provider: AccessTokenProvider, recorder: Recorder
) -> None:
    # The access-token spec documents 401 without a body; Azure APIM sends JSON text.
    validate_response("POST", "/accesstoken/get", 401, None)
    router.post("/accesstoken/get").mock(
        return_value=httpx.Response(
            401,
            json={"error": "invalid_client", "error_description": "AADSTS7000215: bad secret"},
        )
    )
    with pytest.raises(VippsAuthError) as caught:
        await provider.get(CREDENTIALS)
    assert CLIENT_SECRET not in str(caught.value)
    assert recorder.statuses("accesstoken.get") == [401]


async def test_token_endpoint_outage_is_retryable(
    router: respx.MockRouter, provider: AccessTokenProvider, recorder: Recorder
) -> None:
    validate_response("POST", "/accesstoken/get", 500, None)
    router.post("/accesstoken/get").mock(
        side_effect=[httpx.ConnectError("refused"), httpx.Response(500)]
    )
    with pytest.raises(VippsUnavailable):
        await provider.get(CREDENTIALS)
    with pytest.raises(VippsUnavailable):
        await provider.get(CREDENTIALS)
    assert recorder.statuses("accesstoken.get") == [None, 500]


async def test_unreadable_token_answer_does_not_leak_the_body(
    router: respx.MockRouter, provider: AccessTokenProvider
) -> None:
    router.post("/accesstoken/get").mock(
        return_value=httpx.Response(200, json={"access_token_typo": "eyJ-leaky"})
    )
    with pytest.raises(VippsUnexpectedResponse) as caught:
        await provider.get(CREDENTIALS)
    assert "eyJ-leaky" not in str(caught.value)
    assert caught.value.__cause__ is None
