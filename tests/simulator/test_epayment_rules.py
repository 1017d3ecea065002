"""One test per rule the simulator enforces on the ePayment API (REFERENCE.md §1, §7)."""

from __future__ import annotations

import pytest

from tests.simulator.conftest import DKK_MSN, MSN, Env, error_code, open_env

# ---------------------------------------------------------------- gateway: credentials and headers


async def test_missing_subscription_key_is_401_from_the_gateway(env: Env) -> None:
    headers = env.headers()
    del headers["Ocp-Apim-Subscription-Key"]
    response = await env.client.get("/epayment/v1/payments/abcdefgh1", headers=headers)
    assert response.status_code == 401
    # Azure API Management answers this itself, not as problem+json (REFERENCE.md §1).
    assert response.json()["statusCode"] == 401
    assert "subscription key" in response.json()["message"]


async def test_unknown_subscription_key_is_401(env: Env) -> None:
    response = await env.client.get(
        "/epayment/v1/payments/abcdefgh1", headers=env.headers(Ocp_Apim_Subscription_Key="nope")
    )
    assert response.status_code == 401


@pytest.mark.parametrize("authorization", ["", "Bearer not-a-token", "TOKEN"])
async def test_missing_or_bad_bearer_token_is_401(env: Env, authorization: str) -> None:
    headers = env.headers()
    headers["Authorization"] = authorization.replace(
        "TOKEN", env.token
    )  # "TOKEN": no "Bearer" word
    response = await env.client.get("/epayment/v1/payments/abcdefgh1", headers=headers)
    assert response.status_code == 401


async def test_access_token_expires_after_its_configured_lifetime() -> None:
    async with open_env(access_token_lifetime_seconds=60) as env:
        assert (
            await env.client.get("/qr/v1/merchant-callback", headers=env.headers())
        ).status_code == 200
        env.sim.advance_clock(60)
        assert (
            await env.client.get("/qr/v1/merchant-callback", headers=env.headers())
        ).status_code == 401


async def test_access_token_needs_the_right_client_secret(env: Env) -> None:
    response = await env.client.post(
        "/accesstoken/get",
        headers={
            "client_id": "sim-client-id",
            "client_secret": "wrong",
            "Ocp-Apim-Subscription-Key": "sim-subscription-key",
        },
    )
    assert response.status_code == 401


async def test_gateway_errors_can_be_problem_json() -> None:
    async with open_env(gateway_error_style="problem") as env:
        headers = env.headers()
        del headers["Ocp-Apim-Subscription-Key"]
        response = await env.client.get("/epayment/v1/payments/abcdefgh1", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("msn", "status"), [(None, 400), ("12ab", 400), ("1234567", 400), ("999999", 403)]
)
async def test_merchant_serial_number_is_required_valid_and_owned(
    env: Env, msn: str | None, status: int
) -> None:
    response = await env.client.get("/epayment/v1/payments/abcdefgh1", headers=env.headers(msn))
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"


# ---------------------------------------------------------------- create: fields


@pytest.mark.parametrize("reference", ["short", "has space-123", "x" * 51, "ümlaut-1234"])
async def test_reference_must_match_the_pattern(env: Env, reference: str) -> None:
    response = await env.create(reference)
    assert response.status_code == 400
    assert response.json()["extraDetails"][0]["name"] == "reference"


async def test_reference_is_unique_per_msn(env: Env) -> None:
    assert (await env.create("unique-0001", key="a")).status_code == 201
    again = await env.create("unique-0001", key="b")
    assert again.status_code == 409
    assert error_code(again) == "4150"
    # Another MSN has its own reference space.
    assert (await env.create("unique-0001", 100, key="c", msn=DKK_MSN)).status_code == 201


async def test_decimal_amount_is_4040(env: Env) -> None:
    response = await env.create("amount-0001", amount={"currency": "NOK", "value": 100.5})
    assert response.status_code == 400
    assert error_code(response) == "4040"


async def test_amount_above_65_million_is_rejected(env: Env) -> None:
    assert (await env.create("amount-0002", 65_000_001)).status_code == 400
    assert (await env.create("amount-0003", 65_000_000)).status_code == 201


@pytest.mark.parametrize(
    ("msn", "value", "accepted"), [(MSN, 99, False), (MSN, 100, True), (DKK_MSN, 1, True)]
)
async def test_minimum_amount_per_currency_is_6010(
    env: Env, msn: str, value: int, accepted: bool
) -> None:
    response = await env.create(f"minimum-{value}-{msn}", value, msn=msn)
    assert response.status_code == (201 if accepted else 400)
    if not accepted:
        assert error_code(response) == "6010"


async def test_currency_must_match_the_sales_unit_market_5040(env: Env) -> None:
    response = await env.create("currency-0001", amount={"currency": "DKK", "value": 1000})
    assert response.status_code == 400
    assert error_code(response) == "5040"


@pytest.mark.parametrize(
    "customer",
    [
        {"phoneNumber": "4712345678", "customerToken": "abc"},
        {},
        {"phoneNumber": "12345"},
        {"personalQr": "abc"},
    ],
)
async def test_customer_is_exactly_one_valid_form(env: Env, customer: dict[str, str]) -> None:
    response = await env.create("customer-0001", customer=customer)
    assert response.status_code == 400


async def test_push_message_requires_customer(env: Env) -> None:
    response = await env.create("push-0001", customer=None)
    assert response.status_code == 400
    assert response.json()["extraDetails"][0]["name"] == "customer"
    assert (
        await env.create("push-0002", customer=None, userFlow="NATIVE_REDIRECT")
    ).status_code == 201


async def test_push_message_needs_sales_unit_approval_5080() -> None:
    from app.simulator import SalesUnit

    async with open_env(sales_units=(SalesUnit(MSN, "NOK", push_message_allowed=False),)) as env:
        response = await env.create("push-0003")
        assert response.status_code == 400
        assert error_code(response) == "5080"


async def test_customer_token_must_come_from_a_live_scan(env: Env) -> None:
    await env.client.put(
        "/qr/v1/merchant-callback/till-1",
        headers=env.headers(),
        json={"locationDescription": "Kasse 1"},
    )
    unknown = await env.create("token-0001", customer={"customerToken": "made-up"})
    assert unknown.status_code == 400
    token = (await env.client.post("/_sim/qr/till-1/scan")).json()["customerToken"]
    assert (await env.create("token-0002", customer={"customerToken": token})).status_code == 201
    env.sim.advance_clock(15 * 60)  # customer tokens live 15 minutes (REFERENCE.md §4)
    expired = await env.create("token-0003", customer={"customerToken": token})
    assert expired.status_code == 400
    assert expired.json()["extraDetails"][0]["name"] == "customer.customerToken"


async def test_customer_token_belongs_to_the_scanned_msn(env: Env) -> None:
    await env.client.put(
        "/qr/v1/merchant-callback/till-9",
        headers=env.headers(DKK_MSN),
        json={"locationDescription": "Kasse 9"},
    )
    token = (await env.client.post("/_sim/qr/till-9/scan")).json()["customerToken"]
    assert (await env.create("token-0004", customer={"customerToken": token})).status_code == 400


async def test_web_redirect_requires_return_url(env: Env) -> None:
    assert (
        await env.create("redirect-0001", customer=None, userFlow="WEB_REDIRECT")
    ).status_code == 400
    ok = await env.create(
        "redirect-0002",
        customer=None,
        userFlow="WEB_REDIRECT",
        returnUrl="https://shop.example/back",
    )
    assert ok.status_code == 201
    assert "redirectUrl" in ok.json()
    http = await env.create(
        "redirect-0003",
        customer=None,
        userFlow="WEB_REDIRECT",
        returnUrl="http://shop.example/back",
    )
    assert http.status_code == 400


@pytest.mark.parametrize(
    ("description", "status"), [("ab", 400), ("abc", 201), ("x" * 100, 201), ("x" * 101, 400)]
)
async def test_payment_description_is_3_to_100_characters(
    env: Env, description: str, status: int
) -> None:
    response = await env.create(f"description-{len(description)}", paymentDescription=description)
    assert response.status_code == status


async def test_idempotency_key_is_required_and_at_most_50(env: Env) -> None:
    body = {
        "amount": {"currency": "NOK", "value": 1000},
        "paymentMethod": {"type": "WALLET"},
        "reference": "key-00001",
        "userFlow": "NATIVE_REDIRECT",
    }
    missing = await env.client.post("/epayment/v1/payments", headers=env.headers(), json=body)
    assert missing.status_code == 400
    long = await env.client.post(
        "/epayment/v1/payments", headers=env.headers(Idempotency_Key="k" * 51), json=body
    )
    assert long.status_code == 400


# ---------------------------------------------------------------- idempotency (§7.10)


async def test_same_key_same_body_returns_the_original_response_without_a_second_effect(
    env: Env,
) -> None:
    first = await env.create("idem-0001", key="create-1")
    second = await env.create("idem-0001", key="create-1")
    assert (
        (second.status_code, second.json())
        == (first.status_code, first.json())
        == (201, {"reference": "idem-0001"})
    )
    ledger = (await env.client.get("/_sim/ledger", params={"reference": "idem-0001"})).json()
    assert [(e["effect"], e["replay"]) for e in ledger] == [(True, False), (False, True)]
    events = (
        await env.client.get("/epayment/v1/payments/idem-0001/events", headers=env.headers())
    ).json()
    assert [e["name"] for e in events] == ["CREATED"]


async def test_same_key_other_body_is_409_with_the_documented_code(env: Env) -> None:
    await env.create("idem-0002", key="create-2")
    conflict = await env.create("idem-0002", 20000, key="create-2")
    assert conflict.status_code == 409
    assert error_code(conflict) == "4020"
    await env.approve("idem-0002")
    await env.modify("idem-0002", "capture", 5000, key="cap-1")
    capture = await env.modify("idem-0002", "capture", 6000, key="cap-1")
    assert capture.status_code == 409
    assert error_code(capture) == "4010"
    env.sim.advance_clock(60)  # 5 mutating calls per minute per reference
    await env.modify("idem-0002", "refund", 1000, key="ref-1")
    refund = await env.modify("idem-0002", "refund", 2000, key="ref-1")
    assert refund.status_code == 409
    assert error_code(refund) == "4150"


async def test_a_4xx_result_is_remembered_for_its_key(env: Env) -> None:
    await env.create("idem-0003")
    early = await env.modify("idem-0003", "capture", 10000, key="cap-early")
    assert error_code(early) == "6080"
    await env.approve("idem-0003")
    retried = await env.modify("idem-0003", "capture", 10000, key="cap-early")
    assert retried.status_code == 400
    assert error_code(retried) == "6080"
    assert (await env.modify("idem-0003", "capture", 10000, key="cap-new")).status_code == 200


async def test_capture_replay_returns_the_original_body_not_the_current_state(env: Env) -> None:
    await env.authorized("idem-0004")
    first = await env.modify("idem-0004", "capture", 4000, key="cap-a")
    await env.modify("idem-0004", "capture", 1000, key="cap-b")
    replay = await env.modify("idem-0004", "capture", 4000, key="cap-a")
    assert replay.json() == first.json()
    assert replay.json()["aggregate"]["capturedAmount"]["value"] == 4000


# ---------------------------------------------------------------- state rules (§7.4 - §7.7)


async def test_capture_only_when_authorized_6080(env: Env) -> None:
    await env.create("state-0001")
    response = await env.modify("state-0001", "capture", 100)
    assert response.status_code == 400
    assert error_code(response) == "6080"


async def test_capture_at_most_authorized_minus_captured_minus_cancelled_6090(env: Env) -> None:
    await env.authorized("state-0002", 10000)
    assert (await env.modify("state-0002", "capture", 6000)).status_code == 200
    too_much = await env.modify("state-0002", "capture", 4001)
    assert too_much.status_code == 400
    assert error_code(too_much) == "6090"
    last = await env.modify("state-0002", "capture", 4000)
    assert last.json()["aggregate"]["capturedAmount"]["value"] == 10000


async def test_partial_capture_can_be_refused_6140() -> None:
    from app.simulator import SalesUnit

    unit = SalesUnit(MSN, "NOK", push_message_allowed=True, partial_capture_allowed=False)
    async with open_env(sales_units=(unit,)) as env:
        await env.authorized("state-0003")
        response = await env.modify("state-0003", "capture", 5000)
        assert response.status_code == 400
        assert error_code(response) == "6140"


async def test_cancel_before_approval_terminates_with_cancelled_amount(env: Env) -> None:
    await env.create("state-0004", 12300)
    response = await env.modify("state-0004", "cancel")
    assert response.status_code == 200
    assert response.json()["state"] == "TERMINATED"
    assert response.json()["aggregate"]["cancelledAmount"]["value"] == 12300


async def test_cancel_after_approval_releases_the_remainder_and_stays_authorized(env: Env) -> None:
    await env.authorized("state-0005", 10000)
    await env.modify("state-0005", "capture", 3000)
    response = await env.modify("state-0005", "cancel")
    assert response.json()["state"] == "AUTHORIZED"
    assert response.json()["aggregate"]["cancelledAmount"]["value"] == 7000
    more = await env.modify("state-0005", "capture", 1)
    assert error_code(more) == "6090"


async def test_cancel_transaction_only_after_approval_is_6060(env: Env) -> None:
    await env.authorized("state-0006")
    response = await env.modify("state-0006", "cancel", body={"cancelTransactionOnly": True})
    assert response.status_code == 400
    assert error_code(response) == "6060"
    await env.create("state-0007")
    pending = await env.modify("state-0007", "cancel", body={"cancelTransactionOnly": True})
    assert pending.json()["state"] == "TERMINATED"


async def test_fully_captured_payment_cannot_be_cancelled_6040(env: Env) -> None:
    await env.authorized("state-0008")
    await env.modify("state-0008", "capture", 10000)
    response = await env.modify("state-0008", "cancel")
    assert response.status_code == 400
    assert error_code(response) == "6040"


async def test_refund_at_most_captured_minus_refunded_6150(env: Env) -> None:
    await env.authorized("state-0009")
    before_capture = await env.modify("state-0009", "refund", 100)
    assert error_code(before_capture) == "6150"
    await env.modify("state-0009", "capture", 5000)
    assert (await env.modify("state-0009", "refund", 3000)).status_code == 200
    too_much = await env.modify("state-0009", "refund", 2001)
    assert too_much.status_code == 400
    assert error_code(too_much) == "6150"


async def test_unknown_reference_is_404(env: Env) -> None:
    assert (
        await env.client.get("/epayment/v1/payments/unknown-0001", headers=env.headers())
    ).status_code == 404
    assert (await env.modify("unknown-0001", "capture", 100)).status_code == 404


async def test_payment_expires_after_the_configured_time() -> None:
    async with open_env(payment_expiry_seconds=30) as env:
        await env.create("expiry-0001")
        env.sim.advance_clock(29)
        assert (
            await env.client.get("/epayment/v1/payments/expiry-0001", headers=env.headers())
        ).json()["state"] == "CREATED"
        env.sim.advance_clock(1)
        assert (
            await env.client.get("/epayment/v1/payments/expiry-0001", headers=env.headers())
        ).json()["state"] == "EXPIRED"
        assert (await env.client.post("/_sim/payments/expiry-0001/approve")).status_code == 409


async def test_default_expiry_is_ten_minutes_and_fires_without_polling(env: Env) -> None:
    await env.register(["epayments.payment.expired.v1"])
    await env.create("expiry-0002")
    env.sim.advance_clock(599)
    assert env.sim.expire_due() == 0
    env.sim.advance_clock(1)  # advancing the clock runs the sweep: no GET needed
    assert await env.sim.webhooks.drain()
    assert [b["name"] for b in env.receiver.events()] == ["EXPIRED"]


async def test_user_decline_aborts(env: Env) -> None:
    await env.create("decline-0001")
    response = await env.client.post("/_sim/payments/decline-0001/decline")
    assert response.json()["state"] == "ABORTED"
    assert error_code(await env.modify("decline-0001", "capture", 100)) == "6080"


async def test_force_approve_needs_a_test_user_and_the_requested_user(env: Env) -> None:
    await env.create("force-0001")
    url = "/epayment/v1/test/payments/force-0001/approve"
    stranger = await env.client.post(
        url, headers=env.headers(), json={"customer": {"phoneNumber": "4700000000"}}
    )
    assert stranger.status_code == 400
    other = await env.client.post(
        url, headers=env.headers(), json={"customer": {"phoneNumber": "4798765432"}}
    )
    assert other.status_code == 400
    ok = await env.client.post(
        url, headers=env.headers(), json={"customer": {"phoneNumber": "4712345678"}}
    )
    assert ok.status_code == 200
    twice = await env.client.post(
        url, headers=env.headers(), json={"customer": {"phoneNumber": "4712345678"}}
    )
    assert twice.status_code == 400


async def test_force_approve_with_the_redirect_token(env: Env) -> None:
    created = await env.create(
        "force-0002", customer=None, userFlow="WEB_REDIRECT", returnUrl="https://shop.example/r"
    )
    token = created.json()["redirectUrl"].split("token=")[1]
    url = "/epayment/v1/test/payments/force-0002/approve"
    assert (
        await env.client.post(url, headers=env.headers(), json={"token": "wrong"})
    ).status_code == 400
    assert (
        await env.client.post(url, headers=env.headers(), json={"token": token})
    ).status_code == 200


async def test_profile_sub_after_authorization_when_requested(env: Env) -> None:
    await env.authorized("profile-0001")
    await env.create("profile-0002", profile={"scope": "name phoneNumber"})
    await env.approve("profile-0002")
    without = (
        await env.client.get("/epayment/v1/payments/profile-0001", headers=env.headers())
    ).json()
    with_scope = (
        await env.client.get("/epayment/v1/payments/profile-0002", headers=env.headers())
    ).json()
    assert without["profile"] == {}
    assert with_scope["profile"]["sub"] == env.sim.sub_for(MSN, "4712345678")


# ---------------------------------------------------------------- rate limits (§7.11)


async def test_five_calls_per_minute_per_reference_and_operation(env: Env) -> None:
    await env.authorized("rate-0001", 10000)
    for _ in range(5):
        assert (await env.modify("rate-0001", "capture", 100)).status_code == 200
    limited = await env.modify("rate-0001", "capture", 100)
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    # Each operation has its own row on the ePayment "Error handling" page: five captures do
    # not use up the refunds' budget, nor the cancels'.
    for _ in range(5):
        assert (await env.modify("rate-0001", "refund", 10)).status_code == 200
    assert (await env.modify("rate-0001", "refund", 10)).status_code == 429
    assert (await env.modify("rate-0001", "cancel")).status_code == 200
    await env.authorized("rate-0002")  # other references are not affected
    assert (await env.modify("rate-0002", "capture", 100)).status_code == 200
    env.sim.advance_clock(60)
    assert (await env.modify("rate-0001", "capture", 100)).status_code == 400  # 6090 now: none left


async def test_refused_and_replayed_calls_count_against_their_operation(env: Env) -> None:
    """The issue's sequence: create, an early capture (6080), an over-capture (6090), a
    capture, then refunds. The first refund is judged on its merits (6150), not by a 429."""
    assert (await env.create("rate-0005", 10000, key="create-5")).status_code == 201
    early = await env.modify("rate-0005", "capture", 10000)
    assert error_code(early) == "6080"
    await env.approve("rate-0005")
    over = await env.modify("rate-0005", "capture", 20000)
    assert error_code(over) == "6090"
    assert (await env.modify("rate-0005", "capture", 4000, key="cap-1")).status_code == 200
    too_much = await env.modify("rate-0005", "refund", 5000)
    assert too_much.status_code == 400
    assert error_code(too_much) == "6150"
    # Two captures so far were refused and one went through: replays of the stored answer
    # count like any call to the reference (the limit's key has no Idempotency-Key in it).
    for _ in range(2):
        assert (await env.modify("rate-0005", "capture", 4000, key="cap-1")).status_code == 200
    assert (await env.modify("rate-0005", "capture", 4000, key="cap-1")).status_code == 429
    ledger = (await env.client.get("/_sim/ledger?reference=rate-0005")).json()
    captures = [e for e in ledger if e["operation"] == "capturePayment"]
    assert [e["status"] for e in captures] == [400, 400, 200, 200, 200, 429]
    assert [e["replay"] for e in captures] == [False, False, False, True, True, False]


async def test_reads_are_limited_per_reference_and_endpoint() -> None:
    async with open_env(reads_per_minute=3) as env:
        await env.create("rate-0003")
        for _ in range(3):
            assert (
                await env.client.get("/epayment/v1/payments/rate-0003", headers=env.headers())
            ).status_code == 200
        limited = await env.client.get("/epayment/v1/payments/rate-0003", headers=env.headers())
        assert limited.status_code == 429
        assert "Retry-After" in limited.headers
        # "Get a payment" and "Get payment event log" are separate rows, each 120 per minute.
        events = await env.client.get(
            "/epayment/v1/payments/rate-0003/events", headers=env.headers()
        )
        assert events.status_code == 200


async def test_rate_limits_can_be_switched_off() -> None:
    async with open_env(mutations_per_minute=None) as env:
        await env.authorized("rate-0004", 10000)
        for _ in range(8):
            assert (await env.modify("rate-0004", "capture", 100)).status_code == 200
