"""What a merchant meets on the first day with real test keys, and the simulator must refuse too.

* a fresh test sales unit: PUSH_MESSAGE not approved (5080), Login not enabled, changed by the
  sales-unit control;
* webhook URLs: HTTPS on the ports Vipps sends to, nothing local, unless the development switch;
* keys per sales unit, partner keys (``Merchant-Serial-Number`` on every call) and management
  keys (no payment APIs);
* the errors 6100, 6250/423, 6260, 6280 and the refund window;
* Login: ``invalid_user``, ``old_app``, the per-user limit on starting logins, partner keys.
"""

from __future__ import annotations

import base64
import json

import pytest

from app.simulator import SalesUnit
from tests.simulator.conftest import (
    DKK_MSN,
    KEYS,
    MSN,
    PARTNER_KEYS,
    Env,
    error_code,
    open_env,
)

BASIC = "Basic " + base64.b64encode(b"sim-client-id:sim-client-secret").decode()
CIBA = "/vipps-login-ciba/api/backchannel/authentication"
TOKEN = "/access-management-1.0/access/oauth2/token"
CIBA_GRANT = "urn:openid:params:grant-type:ciba"


# ---------------------------------------------------------------- a fresh test sales unit


async def test_a_fresh_sales_unit_is_not_approved_for_push_nor_enabled_for_login() -> None:
    async with open_env(sales_units=(SalesUnit(MSN),)) as env:
        push = await env.create("fresh-0001")
        assert push.status_code == 400
        assert error_code(push) == "5080"
        # The other user flows need no approval.
        assert (await env.create("fresh-0002", userFlow="NATIVE_REDIRECT")).status_code == 201
        login = await env.client.post(
            CIBA,
            headers={"Authorization": BASIC},
            data={"scope": "openid", "login_hint": "urn:msisdn:4712345678"},
        )
        assert login.status_code == 401
        assert login.json()["error"] == "invalid_client"
        units = (await env.client.get("/_sim/sales-units")).json()
        assert units == [
            {
                "msn": MSN,
                "name": "Simulated store",
                "currency": "NOK",
                "pushMessageAllowed": False,
                "loginEnabled": False,
                "customerTokenExchangeAllowed": True,
                "partialCaptureAllowed": True,
            }
        ]


async def test_the_sales_unit_control_switches_capabilities_as_vipps_would_on_request() -> None:
    async with open_env(sales_units=(SalesUnit(MSN),)) as env:
        changed = await env.client.post(
            f"/_sim/sales-units/{MSN}", json={"pushMessageAllowed": True, "loginEnabled": True}
        )
        assert changed.status_code == 200
        assert changed.json()["pushMessageAllowed"] is True
        assert (await env.create("fresh-0003")).status_code == 201
        login = await env.client.post(
            CIBA,
            headers={"Authorization": BASIC},
            data={"scope": "openid", "login_hint": "urn:msisdn:4712345678"},
        )
        assert login.status_code == 200
        await env.client.post(f"/_sim/sales-units/{MSN}", json={"currency": "EUR"})
        wrong_market = await env.create("fresh-0004")
        assert error_code(wrong_market) == "5040"
        bad = await env.client.post(f"/_sim/sales-units/{MSN}", json={"pushMessage": True})
        assert bad.status_code == 400
        assert (await env.client.post("/_sim/sales-units/999999", json={})).status_code == 404
        # A reset puts the sales units back as configured.
        await env.client.post("/_sim/reset", json={})
        assert error_code(await env.create("fresh-0005")) == "5080"


async def test_customer_token_exchange_can_be_withheld_from_a_sales_unit(env: Env) -> None:
    await env.client.put(
        "/qr/v1/merchant-callback/till-1", headers=env.headers(), json={"locationDescription": "K"}
    )
    token = (await env.client.post("/_sim/qr/till-1/scan")).json()["customerToken"]
    body = {"customer": {"customerToken": token}, "requestedData": ["MSISDN"]}
    assert (
        await env.client.post("/qr/v1/exchange/customer", headers=env.headers(), json=body)
    ).status_code == 200
    await env.client.post(f"/_sim/sales-units/{MSN}", json={"customerTokenExchangeAllowed": False})
    refused = await env.client.post("/qr/v1/exchange/customer", headers=env.headers(), json=body)
    assert refused.status_code == 403


# ---------------------------------------------------------------- webhook URLs


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("https://pos.example.com/hook", True),
        ("https://pos.example.com:443/hook", True),
        ("https://pos.example.com:8080/hook", True),
        ("https://pos.example.com:80/hook", True),
        ("http://pos.example.com/hook", False),  # "The URL must use HTTPS"
        ("https://pos.example.com:8443/hook", False),  # not a port Vipps sends to
        ("https://pos.example.com:8000/hook", False),
        ("https://localhost/hook", False),  # not world-reachable
        ("http://127.0.0.1:8000/hook", False),
        ("https://10.0.0.5/hook", False),
        ("https://192.168.1.20/hook", False),
        ("https://[::1]/hook", False),
        ("ftp://pos.example.com/hook", False),
        ("https://pos.example.com:99999/hook", False),
    ],
)
async def test_webhook_urls_follow_the_webhooks_api_rules_by_default(
    env: Env, url: str, accepted: bool
) -> None:
    response = await env.client.post(
        "/webhooks/v1/webhooks",
        headers=env.headers(),
        json={"url": url, "events": ["epayments.payment.captured.v1"]},
    )
    assert response.status_code == (201 if accepted else 400), response.text
    if not accepted:
        assert response.json()["extraDetails"][0]["name"] == "url"


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("http://127.0.0.1:8000/hook", True),
        ("http://localhost:49152/hook", True),
        ("http://[::1]:8000/hook", True),
        ("http://192.168.1.20:8000/hook", False),  # the switch is for this machine only
        ("http://pos.example.com/hook", False),
    ],
)
async def test_the_development_switch_allows_http_on_this_machine_only(
    url: str, accepted: bool
) -> None:
    async with open_env(allow_http_localhost_webhooks=True) as env:
        response = await env.client.post(
            "/webhooks/v1/webhooks",
            headers=env.headers(),
            json={"url": url, "events": ["epayments.payment.captured.v1"]},
        )
        assert response.status_code == (201 if accepted else 400), response.text


# ---------------------------------------------------------------- keys per sales unit, partners


async def test_sales_unit_keys_cover_their_own_msn_only(env: Env) -> None:
    own = await env.client.get("/qr/v1/merchant-callback", headers=env.headers(DKK_MSN))
    assert own.status_code == 200
    # The keys of 123456 naming 654321: "The API keys are not valid for sales unit 654321".
    foreign = {**env.headers(MSN), "Merchant-Serial-Number": DKK_MSN}
    for path in ("/qr/v1/merchant-callback", "/epayment/v1/payments/ref-00000001"):
        response = await env.client.get(path, headers=foreign)
        assert response.status_code == 403, path
    created = await env.client.post(
        "/epayment/v1/payments",
        headers={**foreign, "Idempotency-Key": "k-foreign"},
        json={
            "amount": {"currency": "DKK", "value": 100},
            "paymentMethod": {"type": "WALLET"},
            "customer": {"phoneNumber": "4712345678"},
            "userFlow": "PUSH_MESSAGE",
            "reference": "foreign-0001",
        },
    )
    assert created.status_code == 403
    assert "foreign-0001" not in {
        p["reference"] for p in (await env.client.get("/_sim/payments")).json()
    }


async def test_partner_keys_cover_every_merchant_but_must_name_it(env: Env) -> None:
    token = await env.token_for(*PARTNER_KEYS)
    partner = {"Authorization": f"Bearer {token}", "Ocp-Apim-Subscription-Key": PARTNER_KEYS[2]}
    for msn in (MSN, DKK_MSN):
        listing = await env.client.get(
            "/qr/v1/merchant-callback", headers={**partner, "Merchant-Serial-Number": msn}
        )
        assert listing.status_code == 200, msn
    response = await env.client.post(
        "/epayment/v1/payments",
        headers={**partner, "Merchant-Serial-Number": DKK_MSN, "Idempotency-Key": "p-1"},
        json={
            "amount": {"currency": "DKK", "value": 100},
            "paymentMethod": {"type": "WALLET"},
            "customer": {"phoneNumber": "4712345678"},
            "userFlow": "PUSH_MESSAGE",
            "reference": "partner-0001",
        },
    )
    assert response.status_code == 201
    # Without the header the partner has not said for whom it acts: 400, even where a sales
    # unit's own keys may leave it out (the customer exchange).
    exchange = await env.client.post(
        "/qr/v1/exchange/customer",
        headers=partner,
        json={"customer": {"customerToken": "x"}, "requestedData": ["MSISDN"]},
    )
    assert exchange.status_code == 400
    assert exchange.json()["extraDetails"][0]["name"] == "Merchant-Serial-Number"
    # A Webhooks registration may omit it: it then covers all the partner's merchants.
    hook = await env.client.post(
        "/webhooks/v1/webhooks",
        headers=partner,
        json={"url": "https://pos.example.com/h", "events": ["epayments.payment.captured.v1"]},
    )
    assert hook.status_code == 201


async def test_management_keys_cannot_act_for_a_sales_unit(env: Env) -> None:
    keys = ("sim-management-client-id", "sim-management-client-secret")
    token = await env.token_for(*keys, "sim-management-subscription-key")
    headers = {
        "Authorization": f"Bearer {token}",
        "Ocp-Apim-Subscription-Key": "sim-management-subscription-key",
        "Merchant-Serial-Number": MSN,
    }
    assert (await env.client.get("/qr/v1/merchant-callback", headers=headers)).status_code == 403
    assert (await env.client.get("/webhooks/v1/webhooks", headers=headers)).status_code == 403


# ---------------------------------------------------------------- ePayment errors


async def test_capture_after_the_capture_period_is_6100() -> None:
    async with open_env(capture_period_seconds=3600) as env:
        await env.authorized("period-0001")
        env.sim.advance_clock(3599)
        await env.fetch_token()  # access tokens live an hour in the test environment
        assert (await env.modify("period-0001", "capture", 1000)).status_code == 200
        env.sim.advance_clock(1)
        late = await env.modify("period-0001", "capture", 1000)
        assert late.status_code == 400
        assert error_code(late) == "6100"


async def test_cancel_while_the_user_is_authorizing_is_423_6250_and_not_remembered(
    env: Env,
) -> None:
    await env.create("locked-0001")
    await env.client.post("/_sim/payments/locked-0001/authorizing")
    body = {"cancelTransactionOnly": True}
    locked = await env.modify("locked-0001", "cancel", key="cancel-1", body=body)
    assert locked.status_code == 423
    assert error_code(locked) == "6250"
    # The user declines; the same key now gets the real answer, not the stored 423.
    await env.client.post("/_sim/payments/locked-0001/decline")
    again = await env.modify("locked-0001", "cancel", key="cancel-1", body=body)
    assert again.status_code == 400  # an ABORTED payment cannot be cancelled
    ledger = (await env.client.get("/_sim/ledger?reference=locked-0001")).json()
    cancels = [e for e in ledger if e["operation"] == "cancelPayment"]
    assert [(e["status"], e["replay"]) for e in cancels] == [(423, False), (400, False)]


async def test_funds_released_early_is_6260(env: Env) -> None:
    await env.authorized("released-0001")
    await env.client.post("/_sim/payments/released-0001/release-funds")
    response = await env.modify("released-0001", "capture", 10000)
    assert response.status_code == 400
    assert error_code(response) == "6260"


async def test_transient_capture_failure_is_6280_and_the_same_key_then_captures(env: Env) -> None:
    await env.authorized("transient-0001")
    await env.client.post("/_sim/payments/transient-0001/fail-captures", json={"times": 1})
    failed = await env.modify("transient-0001", "capture", 10000, key="cap-t")
    assert failed.status_code == 400
    assert error_code(failed) == "6280"
    retried = await env.modify("transient-0001", "capture", 10000, key="cap-t")
    assert retried.status_code == 200
    assert retried.json()["aggregate"]["capturedAmount"]["value"] == 10000


async def test_refunds_end_with_the_refund_window() -> None:
    async with open_env(refund_window_seconds=86400) as env:
        await env.authorized("window-0001")
        assert (await env.modify("window-0001", "capture", 10000)).status_code == 200
        env.sim.advance_clock(86399)
        await env.fetch_token()  # access tokens live an hour in the test environment
        assert (await env.modify("window-0001", "refund", 1000)).status_code == 200
        env.sim.advance_clock(1)
        late = await env.modify("window-0001", "refund", 1000)
        assert late.status_code == 400
        assert late.json()["extraDetails"][0]["name"] == "modificationAmount"


# ---------------------------------------------------------------- Login errors


async def _ciba(
    env: Env, phone: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object], dict[str, str]]:
    response = await env.client.post(
        CIBA,
        headers=headers or {"Authorization": BASIC},
        data={"scope": "openid name", "login_hint": f"urn:msisdn:{phone}"},
    )
    return response.status_code, dict(response.json()), dict(response.headers)


async def test_ciba_errors_carry_the_documented_string_codes(env: Env) -> None:
    status, body, _ = await _ciba(env, "4790000015")  # under 15: not eligible
    assert status == 400
    assert body["error_code"] == "invalid_user"
    status, body, _ = await _ciba(env, "4790000042")  # an app too old for this login
    assert status == 400
    assert body["error_code"] == "old_app"
    status, body, _ = await _ciba(env, "4700000001")  # no account at all
    assert (status, body["error_code"]) == (400, "invalid_user")


async def test_a_second_login_towards_the_same_user_is_429_with_retry_after(env: Env) -> None:
    status, first, _ = await _ciba(env, "4712345678")
    assert status == 200
    status, _, headers = await _ciba(env, "4712345678")
    assert status == 429
    assert int(headers["retry-after"]) == 600  # until the open login expires
    assert (await _ciba(env, "4798765432"))[0] == 200  # another user is not affected
    await env.client.post(f"/_sim/logins/{first['auth_req_id']}/refuse")
    assert (await _ciba(env, "4712345678"))[0] == 200


async def test_partner_keys_log_in_with_an_access_token_and_the_msn(env: Env) -> None:
    token = await env.token_for(*PARTNER_KEYS)
    partner = {"Authorization": f"Bearer {token}", "Merchant-Serial-Number": DKK_MSN}
    status, started, _ = await _ciba(env, "4712345678", partner)
    assert status == 200
    await env.client.post(f"/_sim/logins/{started['auth_req_id']}/consent")
    polled = await env.client.post(
        TOKEN,
        headers=partner,
        data={"grant_type": CIBA_GRANT, "auth_req_id": str(started["auth_req_id"])},
    )
    assert polled.status_code == 200
    claims = json.loads(base64.urlsafe_b64decode(polled.json()["id_token"].split(".")[1] + "=="))
    assert claims["msn"] == DKK_MSN  # what a partner validates the id_token by
    # Basic authentication with partner keys does not work, nor a Bearer token of sales-unit keys.
    basic = "Basic " + base64.b64encode(f"{PARTNER_KEYS[0]}:{PARTNER_KEYS[1]}".encode()).decode()
    assert (await _ciba(env, "4798765432", {"Authorization": basic}))[0] == 401
    own = {"Authorization": f"Bearer {env.token}", "Merchant-Serial-Number": MSN}
    assert (await _ciba(env, "4798765432", own))[0] == 401
    # ... and without the MSN the partner has not said for whom it asks.
    assert (await _ciba(env, "4798765432", {"Authorization": f"Bearer {token}"}))[0] == 400


async def test_sales_unit_keys_log_in_for_their_own_unit_only(env: Env) -> None:
    dkk = base64.b64encode(f"{KEYS[DKK_MSN][0]}:{KEYS[DKK_MSN][1]}".encode()).decode()
    assert (await _ciba(env, "4712345678", {"Authorization": f"Basic {dkk}"}))[0] == 200
    foreign = {"Authorization": BASIC, "Merchant-Serial-Number": DKK_MSN}
    assert (await _ciba(env, "4798765432", foreign))[0] == 400


async def test_named_development_hosts_count_as_this_machine_only_with_the_switch() -> None:
    body = {"url": "http://vipps-pos:8000/hook", "events": ["epayments.payment.captured.v1"]}
    async with open_env(development_webhook_hosts=("vipps-pos",)) as env:
        refused = await env.client.post("/webhooks/v1/webhooks", headers=env.headers(), json=body)
        assert refused.status_code == 400
    async with open_env(
        allow_http_localhost_webhooks=True, development_webhook_hosts=("vipps-pos",)
    ) as env:
        accepted = await env.client.post("/webhooks/v1/webhooks", headers=env.headers(), json=body)
        assert accepted.status_code == 201
