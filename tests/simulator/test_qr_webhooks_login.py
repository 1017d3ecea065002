"""Rules of the QR API (§3, §5), the Webhooks API (§6.1, §6.2) and Login/CIBA (§8)."""

from __future__ import annotations

import base64

import pytest

from app.simulator.qrimage import render
from tests.simulator.conftest import DKK_MSN, MSN, Env, open_env

BASIC = "Basic " + base64.b64encode(b"sim-client-id:sim-client-secret").decode()
CIBA = "/vipps-login-ciba/api/backchannel/authentication"
TOKEN = "/access-management-1.0/access/oauth2/token"


async def _put(env: Env, qr_id: str, body: object, msn: str | None = MSN) -> int:
    return (
        await env.client.put(
            f"/qr/v1/merchant-callback/{qr_id}", headers=env.headers(msn), json=body
        )
    ).status_code


# ---------------------------------------------------------------- QR merchant callback


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"locationDescription": "Kasse 1"}, 200),
        ({"locationDescription": "x" * 36}, 200),
        ({"locationDescription": "x" * 37}, 400),
        ({}, 400),
        ({"locationDescription": "Kasse 1", "category": "VENDING"}, 200),
        ({"locationDescription": "Kasse 1", "category": "ONLINE"}, 400),
    ],
)
async def test_put_validates_location_description_and_category(
    env: Env, body: object, status: int
) -> None:
    assert await _put(env, "till-1", body) == status


async def test_put_without_msn_is_400(env: Env) -> None:
    assert await _put(env, "till-1", {"locationDescription": "Kasse 1"}, msn=None) == 400


async def test_category_can_be_rejected_like_an_older_api() -> None:
    async with open_env(qr_category_supported=False) as env:
        assert (
            await _put(env, "till-1", {"locationDescription": "Kasse 1", "category": "IN_STORE"})
            == 400
        )
        assert await _put(env, "till-1", {"locationDescription": "Kasse 1"}) == 200


async def test_put_is_an_upsert_that_keeps_the_qr_content(env: Env) -> None:
    await _put(env, "till-1", {"locationDescription": "Kasse 1"})
    first = (await env.client.get("/qr/v1/merchant-callback/till-1", headers=env.headers())).json()
    await _put(env, "till-1", {"locationDescription": "Kasse 1 ny"})
    second = (await env.client.get("/qr/v1/merchant-callback/till-1", headers=env.headers())).json()
    assert second["locationDescription"] == "Kasse 1 ny"
    assert second["qrContent"] == first["qrContent"]
    listing = (await env.client.get("/qr/v1/merchant-callback", headers=env.headers())).json()
    assert [q["merchantQrId"] for q in listing] == ["till-1"]
    assert (
        await env.client.get("/qr/v1/merchant-callback", headers=env.headers(DKK_MSN))
    ).json() == []


async def test_get_and_delete_unknown_are_404(env: Env) -> None:
    assert (
        await env.client.get("/qr/v1/merchant-callback/nope", headers=env.headers())
    ).status_code == 404
    assert (
        await env.client.delete("/qr/v1/merchant-callback/nope", headers=env.headers())
    ).status_code == 404
    await _put(env, "till-1", {"locationDescription": "Kasse 1"})
    assert (
        await env.client.delete("/qr/v1/merchant-callback/till-1", headers=env.headers())
    ).status_code == 200
    assert (
        await env.client.get("/qr/v1/merchant-callback/till-1", headers=env.headers())
    ).status_code == 404
    assert (await env.client.post("/_sim/qr/till-1/scan")).status_code == 404


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"QrImageFormat": "GIF"}, 400),
        ({"QrImageSize": "99"}, 400),
        ({"QrImageSize": "2001"}, 400),
        ({"qrImageFormat": "PNG", "qrImageSize": "100"}, 200),
    ],
)
async def test_image_query_parameters(env: Env, params: dict[str, str], status: int) -> None:
    await _put(env, "till-1", {"locationDescription": "Kasse 1"})
    response = await env.client.get(
        "/qr/v1/merchant-callback/till-1", headers=env.headers(), params=params
    )
    assert response.status_code == status


@pytest.mark.parametrize("fmt", ["PNG", "SVG"])
async def test_qr_image_url_serves_the_qr_of_qr_content_without_auth(env: Env, fmt: str) -> None:
    await _put(env, "till-1", {"locationDescription": "Kasse 1"})
    qr = (
        await env.client.get(
            "/qr/v1/merchant-callback/till-1",
            headers=env.headers(),
            params={"QrImageFormat": fmt, "QrImageSize": "400"},
        )
    ).json()
    image = await env.client.get(qr["qrImageUrl"])  # no Authorization, no subscription key
    assert image.status_code == 200
    if fmt == "PNG":
        assert image.content.startswith(b"\x89PNG")
        assert image.headers["content-type"] == "image/png"
        width = int.from_bytes(image.content[16:20], "big")
        assert 300 < width <= 400
    else:
        assert b"<svg" in image.content
    # The image is segno's rendering of exactly qrContent.
    assert image.content == render(qr["qrContent"], fmt.lower(), 400 if fmt == "PNG" else 800)
    assert qr["qrContent"].startswith("https://qr.vipps.no/")


# ---------------------------------------------------------------- customer exchange


async def test_exchange_returns_msisdn_and_scan_time_until_the_token_expires(env: Env) -> None:
    await _put(env, "till-1", {"locationDescription": "Kasse 1"})
    scan = (
        await env.client.post("/_sim/qr/till-1/scan", json={"phoneNumber": "4798765432"})
    ).json()
    body = {"customer": {"customerToken": scan["customerToken"]}, "requestedData": ["MSISDN"]}
    ok = await env.client.post("/qr/v1/exchange/customer", headers=env.headers(), json=body)
    assert ok.json()["msisdn"] == "4798765432"
    assert isinstance(ok.json()["timestamp"], int)
    env.sim.advance_clock(900)
    late = await env.client.post("/qr/v1/exchange/customer", headers=env.headers(), json=body)
    assert late.status_code == 400
    assert late.json()["extraDetails"][0]["name"] == "customerToken"


async def test_exchange_without_customer_is_the_documented_400(env: Env) -> None:
    response = await env.client.post(
        "/qr/v1/exchange/customer", headers=env.headers(), json={"requestedData": ["MSISDN"]}
    )
    assert response.status_code == 400
    assert response.json()["extraDetails"] == [
        {"name": "customer", "reason": "Customer object is required."}
    ]


# ---------------------------------------------------------------- Webhooks API


async def test_register_returns_id_and_secret_and_lists_without_secret(env: Env) -> None:
    hook_id = await env.register()
    listing = (await env.client.get("/webhooks/v1/webhooks", headers=env.headers())).json()
    assert listing == {
        "webhooks": [
            {
                "id": hook_id,
                "url": "https://pos.example.com/vipps/webhooks/123456?tenant=a",
                "events": listing["webhooks"][0]["events"],
            }
        ]
    }
    assert "secret" not in listing["webhooks"][0]


async def test_only_one_checked_in_registration_per_msn(env: Env) -> None:
    first = await env.register(["user.checked-in.v1"])
    second = await env.client.post(
        "/webhooks/v1/webhooks",
        headers=env.headers(),
        json={"url": "https://other.example/hook", "events": ["user.checked-in.v1"]},
    )
    assert second.status_code == 400
    assert second.headers["content-type"] == "application/problem+json"
    await env.register(["user.checked-in.v1"], msn=DKK_MSN)  # another MSN has its own slot
    await env.register(["epayments.payment.captured.v1"])  # other events are not limited to one
    assert (
        await env.client.delete(f"/webhooks/v1/webhooks/{first}", headers=env.headers())
    ).status_code == 204
    await env.register(["user.checked-in.v1"])


async def test_delete_unknown_webhook_is_400(env: Env) -> None:
    response = await env.client.delete(
        "/webhooks/v1/webhooks/00000000-0000-0000-0000-000000000000", headers=env.headers()
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        {"url": "/relative", "events": ["user.checked-in.v1"]},
        {"url": "https://x.example/h", "events": []},
        {"url": "https://x.example/h", "events": ["Not An Event"]},
    ],
)
async def test_register_validates_url_and_events(env: Env, body: dict[str, object]) -> None:
    assert (
        await env.client.post("/webhooks/v1/webhooks", headers=env.headers(), json=body)
    ).status_code == 400


# ---------------------------------------------------------------- Login (CIBA) and userinfo


async def _start(env: Env, **form: str) -> dict[str, object]:
    data = {
        "scope": "openid name phoneNumber email",
        "login_hint": "urn:msisdn:4712345678",
        "binding_message": "KASSE-1",
    }
    data.update(form)
    response = await env.client.post(CIBA, headers={"Authorization": BASIC}, data=data)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _poll(env: Env, auth_req_id: object) -> tuple[int, dict[str, object]]:
    response = await env.client.post(
        TOKEN,
        headers={"Authorization": BASIC},
        data={"grant_type": "urn:openid:params:grant-type:ciba", "auth_req_id": str(auth_req_id)},
    )
    return response.status_code, dict(response.json())


async def test_discovery_names_the_ciba_token_and_userinfo_endpoints(env: Env) -> None:
    body = (
        await env.client.get("/access-management-1.0/access/.well-known/openid-configuration")
    ).json()
    assert body["backchannel_authentication_endpoint"] == f"http://sim.test{CIBA}"
    assert body["token_endpoint"] == f"http://sim.test{TOKEN}"
    assert body["userinfo_endpoint"] == "http://sim.test/vipps-userinfo-api/userinfo"


async def test_ciba_pending_slow_down_consent_and_userinfo(env: Env) -> None:
    start = await _start(env)
    assert start["expires_in"] == 600
    assert start["interval"] == 5
    assert await _poll(env, start["auth_req_id"]) == (
        400,
        {
            "error": "authorization_pending",
            "error_description": "The user has not answered yet",
            "error_code": 400,
        },
    )
    status, body = await _poll(env, start["auth_req_id"])
    assert (status, body["error"]) == (400, "slow_down")
    env.sim.advance_clock(5)
    assert (await _poll(env, start["auth_req_id"]))[1]["error"] == "authorization_pending"
    await env.client.post(f"/_sim/logins/{start['auth_req_id']}/consent")
    env.sim.advance_clock(5)
    status, tokens = await _poll(env, start["auth_req_id"])
    assert status == 200
    assert tokens["token_type"] == "Bearer"
    assert (await _poll(env, start["auth_req_id"]))[1]["error"] == "invalid_grant"  # used once
    info = await env.client.get(
        "/vipps-userinfo-api/userinfo",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert info.json() == {
        "sub": env.sim.sub_for(MSN, "4712345678"),
        "name": "Ola Nordmann",
        "given_name": "Ola",
        "family_name": "Nordmann",
        "phone_number": "4712345678",
        "email": "ola.nordmann@example.com",
        "email_verified": True,
    }


async def test_sub_is_stable_per_msn_and_user(env: Env) -> None:
    assert env.sim.sub_for(MSN, "4712345678") == env.sim.sub_for(MSN, "4712345678")
    assert env.sim.sub_for(MSN, "4712345678") != env.sim.sub_for(DKK_MSN, "4712345678")
    assert env.sim.sub_for(MSN, "4712345678") != env.sim.sub_for(MSN, "4798765432")


async def test_ciba_refusal_is_access_denied_and_expiry_is_expired_token(env: Env) -> None:
    refused = await _start(env)
    await env.client.post(f"/_sim/logins/{refused['auth_req_id']}/refuse")
    assert (await _poll(env, refused["auth_req_id"]))[1]["error"] == "access_denied"
    waiting = await _start(env)
    env.sim.advance_clock(600)
    assert (await _poll(env, waiting["auth_req_id"]))[1]["error"] == "expired_token"


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"scope": "name"}, "invalid_scope"),
        ({"login_hint": "4712345678"}, "invalid_request"),
        ({"login_hint": "urn:msisdn:4700000000"}, "invalid_request"),
        ({"binding_message": "kasse 1"}, "invalid_binding_message"),
    ],
)
async def test_ciba_start_validates_its_form(env: Env, form: dict[str, str], error: str) -> None:
    data = {"scope": "openid", "login_hint": "urn:msisdn:4712345678", **form}
    response = await env.client.post(CIBA, headers={"Authorization": BASIC}, data=data)
    assert response.status_code == 400
    assert response.json()["error"] == error


async def test_ciba_needs_client_authentication_and_userinfo_a_valid_token(env: Env) -> None:
    bad = "Basic " + base64.b64encode(b"sim-client-id:wrong").decode()
    response = await env.client.post(
        CIBA,
        headers={"Authorization": bad},
        data={"scope": "openid", "login_hint": "urn:msisdn:4712345678"},
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    info = await env.client.get(
        "/vipps-userinfo-api/userinfo", headers={"Authorization": "Bearer nope"}
    )
    assert info.status_code == 401


async def test_test_users_are_listed(env: Env) -> None:
    users = (await env.client.get("/_sim/test-users")).json()
    assert {
        "phoneNumber": "4712345678",
        "name": "Ola Nordmann",
        "email": "ola.nordmann@example.com",
    } in users
