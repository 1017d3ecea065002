"""Customer club at the till, end to end in-process: service + simulator, on both databases.

Every test here also checks that no full phone number and no customer token reached a log line
(the ``no_personal_data_in_logs`` fixture scans everything the run printed).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select, update

from app.crypto import SecretBox
from app.models import Checkout, Member
from app.observability.pii import find_pii
from app.service.key_rotation import KeyRotation
from tests.support.stack import Stack, in_process_stack, simulator_config

OLA = "4712345678"  # simulator test users
KARI = "4798765432"
RECEIPT = {
    "orderLines": [
        {
            "name": "socks",
            "id": "line-1",
            "totalAmount": 9000,
            "totalAmountExcludingTax": 7200,
            "totalTaxAmount": 1800,
            "taxRate": 2500,
        }
    ],
    "bottomLine": {"currency": "NOK", "receiptNumber": "0001"},
}


class ClubRun:
    """A stack with one till in store ``club-store``, and the secrets this run handled."""

    def __init__(self, stack: Stack, till: dict[str, Any]) -> None:
        self.stack = stack
        self.till = till
        self.customer_tokens: list[str] = []

    async def store(self, policy: str, *, hold: bool = False, hold_seconds: int = 20) -> None:
        response = await self.stack.service.put(
            "/api/v1/stores/club-store",
            json={
                "clubPolicy": policy,
                "memberPriceHold": hold,
                "memberPriceHoldSeconds": hold_seconds,
            },
            headers=self.stack.admin,
        )
        assert response.status_code == 200, response.text

    async def add_member(self, phone: str, name: str) -> str:
        response = await self.stack.service.post(
            "/api/v1/members", json={"phoneNumber": phone, "name": name}, headers=self.stack.admin
        )
        assert response.status_code == 201, response.text
        member_id: str = response.json()["id"]
        return member_id

    async def sale(self, phone: str, amount: int = 10000) -> dict[str, Any]:
        """Ring up a sale and let ``phone`` scan; returns the checkout right after the scan."""
        checkout = await self.stack.checkout(self.till, amount, description="Kjøp Kasse 1")
        scan = await self.stack.scan(self.till, phone)
        self.customer_tokens.append(scan["customerToken"])
        return checkout

    async def wait(self, checkout_id: str, predicate: Any, timeout: float = 15.0) -> dict[str, Any]:
        return await self.stack.wait_for(self.till, checkout_id, predicate, timeout)

    async def wait_outcome(self, checkout_id: str, *outcomes: str) -> dict[str, Any]:
        return await self.wait(
            checkout_id, lambda c: c["member"] is not None and c["member"]["outcome"] in outcomes
        )

    async def pending_login(self) -> dict[str, Any]:
        logins = (await self.stack.sim.get("/_sim/logins")).json()
        pending = [login for login in logins if login["status"] == "pending"]
        assert len(pending) == 1, logins
        login: dict[str, Any] = pending[0]
        return login

    async def answer_login(self, auth_req_id: str, answer: str) -> None:
        response = await self.stack.sim.post(f"/_sim/logins/{auth_req_id}/{answer}")
        assert response.status_code == 200, response.text

    async def pay(self, checkout_id: str) -> dict[str, Any]:
        sent = await self.wait(checkout_id, lambda c: c["paymentSent"])
        await self.stack.approve(sent["reference"])
        return await self.stack.wait_state(self.till, checkout_id, "CAPTURED")

    async def vipps_amount(self, reference: str) -> int:
        payment = (await self.stack.sim.get(f"/_sim/payments/{reference}")).json()
        value: int = payment["amount"]["value"]
        return value

    async def stored(self, checkout_id: str) -> Checkout:
        async with self.stack.app.state.services.ctx.sessions() as session:
            row = await session.scalar(select(Checkout).where(Checkout.id == checkout_id))
        assert row is not None
        return row


@pytest.fixture
def no_personal_data_in_logs(
    capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> Iterator[list[str]]:
    """Yields a list to put the run's customer tokens in; fails the test if a log line carries
    one of them or any full phone number."""
    known: list[str] = []
    yield known
    out, err = capsys.readouterr()
    logged = out + err
    assert logged.strip(), "expected log output to check"
    assert find_pii(logged, known_secrets=known) == []


@pytest.fixture
async def club(pg_url: str, no_personal_data_in_logs: list[str]) -> AsyncIterator[ClubRun]:
    async with _club_stack(pg_url) as run:
        yield run
        no_personal_data_in_logs.extend(run.customer_tokens)


@pytest.fixture
async def any_db_club(
    database_url: str, no_personal_data_in_logs: list[str]
) -> AsyncIterator[ClubRun]:
    """The main paths run on the embedded default (SQLite) as well."""
    async with _club_stack(database_url) as run:
        yield run
        no_personal_data_in_logs.extend(run.customer_tokens)


@pytest.fixture
async def impatient_club(
    pg_url: str, no_personal_data_in_logs: list[str]
) -> AsyncIterator[ClubRun]:
    """A club whose sales wait only one second for the customer to answer an enrollment."""
    async with _club_stack(pg_url, club={"enroll_wait_seconds": 1}) as run:
        yield run
        no_personal_data_in_logs.extend(run.customer_tokens)


@asynccontextmanager
async def _club_stack(
    database_url: str, till_id: str = "till-1", **settings: Any
) -> AsyncIterator[ClubRun]:
    # Logins answer within a second in tests; Vipps's default interval is 5 s.
    config = simulator_config(ciba_interval_seconds=1)
    async with in_process_stack(database_url, sim_config=config, **settings) as stack:
        await stack.ensure_webhook()
        yield ClubRun(stack, await stack.register_till(till_id, store_id="club-store"))


# ---- identification ---------------------------------------------------------------------------


async def test_member_found_is_attached_and_the_sale_is_paid(
    any_db_club: ClubRun,
) -> None:
    club = any_db_club
    await club.store("lookup")
    member_id = await club.add_member(OLA, "Ola Nordmann")
    checkout = await club.sale(OLA)

    paid = await club.pay(checkout["id"])

    assert paid["member"] == {
        "id": member_id,
        "outcome": "member",
        "note": "member Ola Nordmann",
        "priceHoldUntil": None,
    }
    assert paid["capturedAmount"] == 10000
    # A lookup store does not keep the phone number: the checkout has no column for one.
    stored = await club.stored(checkout["id"])
    assert not any("phone" in column.name for column in type(stored).__table__.columns)


async def test_non_member_in_a_lookup_store_pays_without_membership(club: ClubRun) -> None:
    await club.store("lookup", hold=True)
    await club.add_member(OLA, "Ola Nordmann")
    checkout = await club.sale(KARI)

    paid = await club.pay(checkout["id"])

    assert paid["member"]["outcome"] == "not_member"
    assert paid["member"]["id"] is None
    assert (await club.stack.sim.get("/_sim/logins")).json() == []  # nobody asked to join


async def test_exchange_failure_never_blocks_the_sale(club: ClubRun) -> None:
    await club.store("enroll")
    fault = {"kind": "error", "status": 503, "operation": "exchangeCustomer", "times": 10}
    assert (await club.stack.sim.post("/_sim/faults", json=fault)).status_code in (200, 201)
    checkout = await club.sale(OLA)

    paid = await club.pay(checkout["id"])

    assert paid["member"]["outcome"] == "exchange_failed"
    assert paid["member"]["note"].startswith("phone number exchange failed (HTTP 503")
    assert paid["member"]["id"] is None


# ---- enrollment -------------------------------------------------------------------------------


async def test_non_member_is_enrolled_by_consent_and_recognised_next_time(
    any_db_club: ClubRun,
) -> None:
    club = any_db_club
    await club.store("enroll")
    checkout = await club.sale(KARI)
    asked = await club.wait_outcome(checkout["id"], "enrolling")
    assert asked["state"] == "IDENTIFYING"
    assert not asked["paymentSent"]
    login = await club.pending_login()
    assert login["phoneNumber"] == KARI
    # The till shows the same code the customer sees in the app.
    assert asked["member"]["note"].endswith(f"code {login['bindingMessage']}")

    await club.answer_login(login["authReqId"], "consent")
    paid = await club.pay(checkout["id"])

    assert paid["member"]["outcome"] == "enrolled"
    assert paid["member"]["note"] == "joined the club"
    member = (
        await club.stack.service.get(
            f"/api/v1/members/{paid['member']['id']}", headers=club.stack.admin
        )
    ).json()
    assert member["name"] == "Kari Nordmann"
    assert member["vippsSub"]
    assert member["phoneNumber"] == "********32"
    assert member["storeId"] == "club-store"

    again = await club.sale(KARI)
    recognised = await club.pay(again["id"])
    assert recognised["member"]["outcome"] == "member"
    assert recognised["member"]["id"] == member["id"]


async def test_customer_refuses_enrollment_and_pays_at_once(club: ClubRun) -> None:
    # A member-price hold is for members: a customer who declined is not held.
    await club.store("enroll", hold=True, hold_seconds=60)
    checkout = await club.sale(KARI)
    await club.wait_outcome(checkout["id"], "enrolling")

    await club.answer_login((await club.pending_login())["authReqId"], "refuse")
    paid = await club.pay(checkout["id"])

    assert paid["member"]["outcome"] == "enrollment_refused"
    assert paid["member"]["id"] is None
    assert paid["amount"]["value"] == 10000


async def test_enrollment_login_expires_and_the_sale_goes_on(club: ClubRun) -> None:
    await club.store("enroll")
    checkout = await club.sale(KARI)
    await club.wait_outcome(checkout["id"], "enrolling")

    # The login lives 600 s at the simulator; the customer token (900 s) survives this.
    advanced = await club.stack.sim.post("/_sim/clock/advance", json={"seconds": 601})
    assert advanced.status_code == 200, advanced.text
    paid = await club.pay(checkout["id"])

    assert paid["member"]["outcome"] == "enrollment_expired"
    assert paid["member"]["id"] is None


async def test_slow_enrollment_lets_the_payment_go_first_and_completes_later(
    impatient_club: ClubRun,
) -> None:
    club = impatient_club
    await club.store("enroll")
    checkout = await club.sale(KARI)
    await club.wait_outcome(checkout["id"], "enrolling")

    sent = await club.wait(checkout["id"], lambda c: c["paymentSent"])
    assert sent["member"]["outcome"] == "enrolling"
    assert "payment sent without membership" in sent["member"]["note"]

    await club.answer_login((await club.pending_login())["authReqId"], "consent")
    joined = await club.wait_outcome(checkout["id"], "enrolled")
    assert joined["member"]["id"]
    assert joined["member"]["note"] == "joined the club after the payment was requested"
    await club.stack.approve(joined["reference"])
    paid = await club.stack.wait_state(club.till, checkout["id"], "CAPTURED")
    assert paid["member"]["id"] == joined["member"]["id"]


async def test_a_stuck_club_step_is_released_before_the_customer_token_expires(
    club: ClubRun,
) -> None:
    await club.store("enroll")
    checkout = await club.sale(KARI)
    await club.wait_outcome(checkout["id"], "enrolling")
    # As if the process following the login had died and the token's 15 minutes were nearly up.
    await club.stack.app.state.club.aclose()
    ctx = club.stack.app.state.services.ctx
    async with ctx.sessions() as session, session.begin():
        await session.execute(
            update(Checkout)
            .where(Checkout.id == checkout["id"])
            .values(customer_token_expires_at=ctx.clock() + timedelta(seconds=30))
        )

    sent = await club.wait(checkout["id"], lambda c: c["state"] == "PAYMENT_REQUESTED")
    assert sent["member"]["outcome"] == "enrolling"


# ---- member price -----------------------------------------------------------------------------


async def test_member_price_is_applied_once_before_the_payment_request(
    any_db_club: ClubRun,
) -> None:
    club = any_db_club
    await club.store("lookup", hold=True, hold_seconds=60)
    member_id = await club.add_member(OLA, "Ola Nordmann")
    checkout = await club.sale(OLA)

    held = await club.wait(checkout["id"], lambda c: c["state"] == "AWAITING_POS_UPDATE")
    assert held["member"]["id"] == member_id
    assert held["member"]["priceHoldUntil"] is not None
    assert not held["paymentSent"]

    url = f"/api/v1/checkouts/{checkout['id']}/member-price"
    headers = {**club.stack.till_headers(club.till), "Idempotency-Key": "member-price-1"}
    body = {"amount": 9000, "receipt": RECEIPT}
    updated = await club.stack.service.post(url, json=body, headers=headers)
    assert updated.status_code == 200, updated.text
    assert updated.json()["amount"]["value"] == 9000
    assert updated.json()["originalAmount"] == 10000
    replay = await club.stack.service.post(url, json=body, headers=headers)
    assert replay.status_code == 200, replay.text
    second = await club.stack.service.post(
        url, json={"amount": 8000}, headers=club.stack.till_headers(club.till)
    )
    assert second.status_code == 409
    assert second.json()["code"] == "update_window_closed"

    paid = await club.pay(checkout["id"])
    assert paid["capturedAmount"] == 9000
    assert paid["receipt"]["orderLines"][0]["totalAmount"] == 9000
    assert await club.vipps_amount(paid["reference"]) == 9000


async def test_member_price_must_add_up(club: ClubRun) -> None:
    await club.store("lookup", hold=True, hold_seconds=60)
    await club.add_member(OLA, "Ola Nordmann")
    checkout = await club.sale(OLA, amount=9000)
    await club.wait(checkout["id"], lambda c: c["state"] == "AWAITING_POS_UPDATE")

    wrong = await club.stack.service.post(
        f"/api/v1/checkouts/{checkout['id']}/member-price",
        json={"amount": 8000, "receipt": RECEIPT},
        headers=club.stack.till_headers(club.till),
    )

    assert wrong.status_code == 422
    assert wrong.json()["code"] == "validation_error"
    current = await club.stack.get(club.till, checkout["id"])
    assert current["state"] == "AWAITING_POS_UPDATE"
    assert current["amount"]["value"] == 9000


async def test_member_price_not_sent_in_time_requests_the_original_amount(club: ClubRun) -> None:
    await club.store("lookup", hold=True, hold_seconds=1)
    await club.add_member(OLA, "Ola Nordmann")
    checkout = await club.sale(OLA)
    await club.wait(checkout["id"], lambda c: c["state"] == "AWAITING_POS_UPDATE")

    sent = await club.wait(checkout["id"], lambda c: c["paymentSent"])
    late = await club.stack.service.post(
        f"/api/v1/checkouts/{checkout['id']}/member-price",
        json={"amount": 9000, "receipt": RECEIPT},
        headers=club.stack.till_headers(club.till),
    )

    assert late.status_code == 409
    assert late.json()["code"] == "update_window_closed"
    assert sent["amount"]["value"] == 10000
    assert await club.vipps_amount(sent["reference"]) == 10000


async def test_member_price_is_refused_before_identification(club: ClubRun) -> None:
    await club.store("lookup", hold=True)
    checkout = await club.stack.checkout(club.till, 10000)
    early = await club.stack.service.post(
        f"/api/v1/checkouts/{checkout['id']}/member-price",
        json={"amount": 9000, "receipt": RECEIPT},
        headers=club.stack.till_headers(club.till),
    )
    assert early.status_code == 409
    assert early.json()["code"] == "update_not_expected"


# ---- Login refusals (merchant-initiated login, "Error responses") -----------------------------


@pytest.mark.parametrize(
    ("phone", "note"),
    [
        ("4790000042", "the customer's app is too old for login"),  # error_code=old_app
        ("4790000015", "the customer cannot use Vipps login"),  # error_code=invalid_user
    ],
)
async def test_a_login_vipps_refuses_for_the_customer_never_blocks_the_sale(
    club: ClubRun, phone: str, note: str
) -> None:
    await club.store("enroll")
    checkout = await club.sale(phone)

    paid = await club.pay(checkout["id"])

    assert paid["member"]["outcome"] == "enrollment_failed"
    assert note in paid["member"]["note"]
    assert paid["capturedAmount"] == 10000


async def test_a_sales_unit_without_login_pays_without_enrollment(club: ClubRun) -> None:
    await club.store("enroll")
    switched = await club.stack.sim.post("/_sim/sales-units/123456", json={"loginEnabled": False})
    assert switched.status_code == 200
    checkout = await club.sale(KARI)

    paid = await club.pay(checkout["id"])

    assert paid["member"]["outcome"] == "enrollment_failed"
    assert "Login is not enabled for this sales unit" in paid["member"]["note"]


async def test_an_open_login_to_the_same_customer_is_not_waited_out(club: ClubRun) -> None:
    """429 "Too many login requests started towards the same user": Vipps asks to wait; the
    customer at the till cannot, so the sale goes on at once and the login is not retried."""
    await club.store("enroll")
    other_merchant = base64.b64encode(b"sim-client-id-654321:sim-client-secret-654321").decode()
    elsewhere = await club.stack.sim.post(
        "/vipps-login-ciba/api/backchannel/authentication",
        headers={"Authorization": f"Basic {other_merchant}"},
        data={"scope": "openid", "login_hint": f"urn:msisdn:{KARI}"},
    )
    assert elsewhere.status_code == 200
    checkout = await club.sale(KARI)

    paid = await club.pay(checkout["id"])

    assert paid["member"]["outcome"] == "enrollment_failed"
    assert "another login to this customer is still open" in paid["member"]["note"]
    ours = (await club.stack.sim.get("/_sim/ledger?operation=cibaAuthentication")).json()
    assert [(c["msn"], c["status"]) for c in ours] == [("654321", 200), ("123456", 429)]


# ---- encryption-key rotation ------------------------------------------------------------------

OLD_KEY = "0S9uG8rK4Jmy0-yb7gGi5XJjKb6Y6zUJrPz3DgH5zC4="
NEW_KEY = "q2Rk8rbN9Y7l1QkzJwXq1e3bKx6m4a0vC8dT5fH2sUg="


async def test_a_member_from_before_an_encryption_key_rotation_is_found_and_not_added_twice(
    database_url: str, no_personal_data_in_logs: list[str]
) -> None:
    """Rotation as documented, ``ENCRYPTION_KEY="NEW,OLD"``: a member enrolled under OLD came
    back ``not_member`` and the same number could register a second time (issue 18, item 4)."""
    async with _club_stack(database_url, security={"encryption_key": OLD_KEY}) as before:
        await before.store("lookup")
        member_id = await before.add_member(OLA, "Ola Nordmann")
    async with _club_stack(
        database_url, "till-2", security={"encryption_key": f"{NEW_KEY},{OLD_KEY}"}
    ) as after:
        again = await after.stack.service.post(
            "/api/v1/members", json={"phoneNumber": OLA, "name": "Ola"}, headers=after.stack.admin
        )
        assert again.status_code == 200, again.text  # already a member: nothing stored
        assert again.json()["id"] == member_id
        checkout = await after.sale(OLA)
        found = await after.wait_outcome(checkout["id"], "member", "not_member")
        no_personal_data_in_logs.extend(after.customer_tokens)
        assert found["member"]["outcome"] == "member"
        assert found["member"]["id"] == member_id
        ctx = after.stack.app.state.services.ctx
        async with ctx.sessions() as session:
            rows = (await session.scalars(select(Member))).all()
        assert len(rows) == 1
        # Found under OLD's hash, the member was moved to NEW's on the way.
        assert rows[0].phone_hash == SecretBox(SecretStr(NEW_KEY)).lookup_hash(OLA)
        # The documented last step before OLD is dropped.
        report = await KeyRotation(ctx).run()
        assert report.clean, report
    async with _club_stack(database_url, "till-3", security={"encryption_key": NEW_KEY}) as later:
        checkout = await later.sale(OLA)
        found = await later.wait_outcome(checkout["id"], "member", "not_member")
        no_personal_data_in_logs.extend(later.customer_tokens)
        assert found["member"]["id"] == member_id
