"""Merchant-initiated (CIBA) login: client_secret_basic, never the platform token or key."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from pydantic import SecretStr

from app.simulator.conformance import find_operation, validate_response
from app.vipps.client import VippsClient
from app.vipps.errors import (
    VippsAuthError,
    VippsOutcomeUnknown,
    VippsRejected,
    VippsUnavailable,
    VippsUnexpectedResponse,
)
from app.vipps.login import CibaEnded, CibaPending, msisdn_login_hint
from app.vipps.schemas import CibaTokens

from .conftest import BASE, CLIENT_ID, CLIENT_SECRET, MSN, Recorder, canned, expect_only

DISCOVERY = "/access-management-1.0/access/.well-known/openid-configuration"
CIBA_START = "/vipps-login-ciba/api/backchannel/authentication"
TOKEN = "/access-management-1.0/access/oauth2/token"
USERINFO = "/vipps-userinfo-api/userinfo"
BASIC = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()


def form(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.content.decode(), strict_parsing=True).items()}


def assert_login_headers(request: httpx.Request) -> None:
    assert request.headers["Authorization"] == BASIC
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["Vipps-System-Name"] == "vipps-pos"
    # REFERENCE.md §8.1: Login uses neither the access token nor the subscription key.
    assert "Ocp-Apim-Subscription-Key" not in request.headers
    assert "client_secret" not in request.headers


def discovery_document() -> dict[str, Any]:
    return {
        "issuer": f"{BASE}/access-management-1.0/access/",
        "authorization_endpoint": f"{BASE}/access-management-1.0/access/oauth2/auth",
        "token_endpoint": f"{BASE}{TOKEN}",
        "userinfo_endpoint": f"{BASE}{USERINFO}",
        "jwks_uri": f"{BASE}/access-management-1.0/access/.well-known/jwks.json",
        "backchannel_authentication_endpoint": f"{BASE}{CIBA_START}",
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "grant_types_supported": ["authorization_code", "urn:openid:params:grant-type:ciba"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    }


@pytest.fixture
def discovered(router: respx.MockRouter) -> respx.Route:
    """The discovery document the Login calls take their endpoints from."""
    answer = canned(
        "GET", DISCOVERY, 200, discovery_document(), headers={"Cache-Control": "max-age=3600"}
    )
    return router.get(DISCOVERY).mock(return_value=answer)


def test_ciba_endpoints_have_no_published_spec() -> None:
    # SOURCES.md: the CIBA endpoints and userinfo exist only in the docs-site spec, which could
    # not be fetched. Their shapes come from REFERENCE.md §8.2-8.3 and are checked field by
    # field in the tests below instead.
    assert find_operation("POST", CIBA_START) is None
    assert find_operation("GET", USERINFO) is None


async def test_discovery_is_cached_for_max_age(
    router: respx.MockRouter, client: VippsClient, recorder: Recorder
) -> None:
    answer = canned(
        "GET", DISCOVERY, 200, discovery_document(), headers={"Cache-Control": "max-age=3600"}
    )
    route = router.get(DISCOVERY).mock(return_value=answer)
    first = await client.login_discovery()
    recorder.now += 3599
    assert await client.login_discovery() == first
    assert route.call_count == 1
    recorder.now += 1
    await client.login_discovery()
    assert route.call_count == 2
    request = route.calls.last.request
    assert "Authorization" not in request.headers
    assert "Ocp-Apim-Subscription-Key" not in request.headers
    assert first.token_endpoint == f"{BASE}{TOKEN}"
    assert first.backchannel_authentication_endpoint == f"{BASE}{CIBA_START}"


async def test_discovery_without_cache_headers_is_cached_briefly(
    router: respx.MockRouter, client: VippsClient, recorder: Recorder
) -> None:
    route = router.get(DISCOVERY).mock(
        return_value=canned("GET", DISCOVERY, 200, discovery_document())
    )
    await client.login_discovery()
    recorder.now += 299
    await client.login_discovery()
    assert route.call_count == 1


async def test_ciba_start(
    router: respx.MockRouter, client: VippsClient, discovered: respx.Route
) -> None:
    route = router.post(CIBA_START).mock(
        return_value=httpx.Response(
            200,
            json={"auth_req_id": "VYGaaAMRkI6SyAm_uIywhxsN2K0", "expires_in": 600, "interval": 5},
        )
    )
    started = await client.ciba_start(
        MSN,
        msisdn_login_hint("4712345678"),
        "openid name phoneNumber",
        binding_message="KASSE-2",
        requested_expiry=300,
    )
    request = route.calls.last.request
    assert_login_headers(request)
    assert request.headers["Merchant-Serial-Number"] == MSN
    assert form(request) == {
        "scope": "openid name phoneNumber",
        "login_hint": "urn:msisdn:4712345678",
        "binding_message": "KASSE-2",
        "requested_expiry": "300",
    }
    assert started.auth_req_id == "VYGaaAMRkI6SyAm_uIywhxsN2K0"
    assert (started.expires_in, started.interval) == (600, 5)


async def test_ciba_start_minimal_form_and_default_interval(
    router: respx.MockRouter, client: VippsClient, discovered: respx.Route
) -> None:
    route = router.post(CIBA_START).mock(
        return_value=httpx.Response(200, json={"auth_req_id": "abc", "expires_in": 600})
    )
    started = await client.ciba_start(MSN, "urn:msisdn:4712345678", "openid")
    assert form(route.calls.last.request) == {
        "scope": "openid",
        "login_hint": "urn:msisdn:4712345678",
    }
    assert started.interval == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scope": "name phoneNumber"}, "openid"),
        ({"binding_message": "kasse-2"}, "binding_message"),
        ({"binding_message": "AB"}, "binding_message"),
        ({"requested_expiry": 0}, "requested_expiry"),
    ],
)
async def test_ciba_start_arguments_are_checked_before_sending(
    router: respx.MockRouter, client: VippsClient, kwargs: dict[str, Any], message: str
) -> None:
    arguments: dict[str, Any] = {"scope": "openid", **kwargs}
    with pytest.raises(ValueError, match=message):
        await client.ciba_start(MSN, "urn:msisdn:4712345678", **arguments)


def test_msisdn_login_hint_refuses_formatted_numbers() -> None:
    with pytest.raises(ValueError, match="10-15 digits") as caught:
        msisdn_login_hint("+47 123 45 678")
    assert "123 45 678" not in str(caught.value)


async def test_ciba_start_rejected_for_an_old_app(
    router: respx.MockRouter, client: VippsClient, discovered: respx.Route, recorder: Recorder
) -> None:
    router.post(CIBA_START).mock(
        return_value=httpx.Response(400, json={"error": "invalid_request", "error_code": "old_app"})
    )
    with pytest.raises(VippsRejected) as caught:
        await client.ciba_start(MSN, "urn:msisdn:4712345678", "openid")
    assert caught.value.error_code == "old_app"
    assert recorder.sleeps == []


async def test_ciba_start_is_not_repeated_once_it_may_have_arrived(
    router: respx.MockRouter, client: VippsClient, discovered: respx.Route
) -> None:
    # A repeat would push the user twice.
    route = router.post(CIBA_START).mock(return_value=httpx.Response(503))
    with pytest.raises(VippsOutcomeUnknown):
        await client.ciba_start(MSN, "urn:msisdn:4712345678", "openid")
    assert route.call_count == 1


async def test_ciba_start_does_not_wait_out_a_429(
    router: respx.MockRouter, client: VippsClient, discovered: respx.Route, recorder: Recorder
) -> None:
    # "Too many login requests started towards the same user at the same time. Please respect
    # the Retry-After header": the customer at the till cannot wait it out; the caller goes on.
    route = router.post(CIBA_START).mock(
        return_value=httpx.Response(429, headers={"Retry-After": "3"}, text="Too many requests")
    )
    with pytest.raises(VippsUnavailable) as caught:
        await client.ciba_start(MSN, "urn:msisdn:4712345678", "openid")
    assert caught.value.status == 429
    assert caught.value.retry_after == 3.0
    assert recorder.sleeps == []
    assert route.call_count == 1


async def test_login_endpoints_come_from_discovery_and_stay_on_the_vipps_host(
    router: respx.MockRouter, client: VippsClient
) -> None:
    document = {
        **discovery_document(),
        "backchannel_authentication_endpoint": f"{BASE}/ciba/v2/start",
        "token_endpoint": "https://login.example.net/oauth2/token",
    }
    router.get(DISCOVERY).mock(return_value=httpx.Response(200, json=document))
    moved = router.post("/ciba/v2/start").mock(
        return_value=httpx.Response(200, json={"auth_req_id": "abc", "expires_in": 600})
    )
    await client.ciba_start(MSN, "urn:msisdn:4712345678", "openid")
    assert moved.call_count == 1
    # A client secret is never sent to another origin, whatever the document says.
    with pytest.raises(VippsUnexpectedResponse, match="not on the Vipps host"):
        await client.ciba_poll_token(MSN, "abc")


async def test_ciba_poll_returns_tokens(
    router: respx.MockRouter, client: VippsClient, discovered: respx.Route
) -> None:
    body = {
        "access_token": "user-access-token",
        "token_type": "Bearer",
        "expires_in": 300,
        "id_token": "eyJhbGciOiJSUzI1NiJ9.payload.signature",
        "scope": "openid name phoneNumber",
    }
    # Login 1.1.0 types `id_token` as an integer, a plain error in the spec: an ID token is a
    # JWT string (OpenID Connect Core §2). That is the only objection allowed.
    answer = canned("POST", TOKEN, 200, body, known_violation="is not of type 'integer'")
    route = router.post(TOKEN).mock(return_value=answer)
    result = await client.ciba_poll_token(MSN, "VYGaaAMRkI6SyAm_uIywhxsN2K0")
    request = route.calls.last.request
    assert_login_headers(request)
    assert form(request) == {
        "grant_type": "urn:openid:params:grant-type:ciba",
        "auth_req_id": "VYGaaAMRkI6SyAm_uIywhxsN2K0",
    }
    assert isinstance(result, CibaTokens)
    assert result.access_token.get_secret_value() == "user-access-token"
    assert result.expires_in == 300
    assert "user-access-token" not in repr(result)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("authorization_pending", CibaPending(slow_down=False)),
        ("slow_down", CibaPending(slow_down=True)),
        ("access_denied", CibaEnded(reason="access_denied", detail="The user said no")),
        ("expired_token", CibaEnded(reason="expired_token", detail="The user said no")),
    ],
)
async def test_ciba_poll_outcomes(
    router: respx.MockRouter,
    client: VippsClient,
    discovered: respx.Route,
    recorder: Recorder,
    error: str,
    expected: object,
) -> None:
    # The Login spec documents no 400 for the token endpoint; CIBA core §11 defines these.
    expect_only(
        "is not a documented response",
        lambda: validate_response("POST", TOKEN, 400, {"error": error}),
    )
    router.post(TOKEN).mock(
        return_value=httpx.Response(
            400, json={"error": error, "error_description": "The user said no"}
        )
    )
    assert await client.ciba_poll_token(MSN, "abc") == expected
    assert recorder.sleeps == []


async def test_ciba_poll_other_errors_raise(
    router: respx.MockRouter, client: VippsClient, discovered: respx.Route
) -> None:
    router.post(TOKEN).mock(
        side_effect=[
            httpx.Response(400, json={"error": "invalid_grant"}),
            canned("POST", TOKEN, 401, {"error": "invalid_client"}),
        ]
    )
    with pytest.raises(VippsRejected) as rejected:
        await client.ciba_poll_token(MSN, "abc")
    assert rejected.value.oauth_error == "invalid_grant"
    with pytest.raises(VippsAuthError):
        await client.ciba_poll_token(MSN, "abc")


async def test_userinfo_uses_the_users_token_only(
    router: respx.MockRouter, client: VippsClient, discovered: respx.Route
) -> None:
    route = router.get(USERINFO).mock(
        return_value=httpx.Response(
            200,
            json={
                "sub": "c06c4afe-d9e1-4c5d-939a-177d752a0944",
                "phone_number": "4712345678",
                "name": "Ada Lovelace",
                "email": "ada@example.com",
                "email_verified": True,
                "sid": "ignored",
            },
        )
    )
    info = await client.userinfo(SecretStr("user-access-token"))
    request = route.calls.last.request
    assert request.headers["Authorization"] == "Bearer user-access-token"
    assert "Ocp-Apim-Subscription-Key" not in request.headers
    assert "Merchant-Serial-Number" not in request.headers
    assert info.sub == "c06c4afe-d9e1-4c5d-939a-177d752a0944"
    assert info.phone_number is not None
    assert info.phone_number.get_secret_value() == "4712345678"
    assert "4712345678" not in repr(info)
