"""Keys per sales unit and partner keys, through the admin API against the simulator, and the
first contact: a till for an MSN we hold no keys for, a webhook URL Vipps would refuse.

The simulator issues each sales unit its own keys and refuses a call whose keys do not cover
its MSN, as Vipps does; the service is configured with 123456's keys only (tests.support.stack).
"""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from app.models import AuditEntry, VippsKeySet
from tests.api.support import assert_problem, checked_stack, ledger, payment_sent
from tests.support.stack import DKK_KEYS, DKK_MSN, Stack

PARTNER = {
    "client_id": "sim-partner-client-id",
    "client_secret": "sim-partner-client-secret",
    "subscription_key": "sim-partner-subscription-key",
    "partner_keys": True,
}


async def _register(stack: Stack, till_id: str, msn: str) -> httpx.Response:
    return await stack.service.post(
        "/api/v1/tills",
        json={"tillId": till_id, "storeId": "s-1", "locationDescription": "Kasse", "msn": msn},
        headers=stack.admin,
    )


async def _dkk_sale(stack: Stack, till_id: str = "till-dkk") -> dict[str, object]:
    till = await stack.register_till(till_id, msn=DKK_MSN)
    assert till["qrStatus"] == "SYNCED"
    checkout = await stack.checkout(till, 1500, currency="DKK")
    await stack.scan(till)
    sent = await payment_sent(stack, till, checkout["id"])
    await stack.approve(str(sent["reference"]))
    return await stack.wait_state(till, checkout["id"], "CAPTURED")


async def test_a_till_for_an_msn_without_keys_is_refused_until_its_keys_are_added(
    database_url: str,
) -> None:
    async with checked_stack(database_url) as stack:
        refused = await _register(stack, "till-dkk", DKK_MSN)
        body = assert_problem(refused, 422, "msn_not_covered")
        assert body["errors"][0]["field"] == "msn"
        assert "vipps-pos keys add 654321" in body["detail"]
        assert (
            await stack.service.get("/api/v1/tills/till-dkk", headers=stack.admin)
        ).status_code == 404
        await stack.add_keys()
        await stack.ensure_webhook(DKK_MSN)
        done = await _dkk_sale(stack)
        assert done["capturedAmount"] == 1500
        # Every call for 654321 went out with 654321's own keys: none was refused with 403.
        assert all(c["status"] != 403 for c in await ledger(stack))


async def test_keys_are_tried_at_vipps_before_they_are_stored(database_url: str) -> None:
    async with checked_stack(database_url) as stack:
        wrong = {**DKK_KEYS, "clientSecret": "not-the-secret"}
        rejected = await stack.service.put(
            f"/api/v1/vipps-keys/{DKK_MSN}", json=wrong, headers=stack.admin
        )
        assert_problem(rejected, 422, "vipps_keys_rejected")
        # Valid keys, but another sales unit's: Vipps answers 403 for this MSN.
        others = {
            "clientId": "sim-client-id",
            "clientSecret": "sim-client-secret",
            "subscriptionKey": "sim-subscription-key",
        }
        foreign = await stack.service.put(
            f"/api/v1/vipps-keys/{DKK_MSN}", json=others, headers=stack.admin
        )
        body = assert_problem(foreign, 422, "vipps_keys_rejected")
        assert "not valid for sales unit 654321" in body["detail"]
        listed = (await stack.service.get("/api/v1/vipps-keys", headers=stack.admin)).json()
        assert [k["source"] for k in listed] == ["configured"]


async def test_keys_are_stored_encrypted_listed_by_fingerprint_rotated_and_audited(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with checked_stack(database_url) as stack:
        put = await stack.service.put(
            f"/api/v1/vipps-keys/{DKK_MSN}", json=DKK_KEYS, headers=stack.admin
        )
        assert put.status_code == 200, put.text
        added = put.json()
        assert (added["created"], added["verified"], added["source"]) == (True, True, "sales_unit")
        listing = await stack.service.get("/api/v1/vipps-keys", headers=stack.admin)
        for secret in DKK_KEYS.values():
            assert secret not in listing.text
            assert secret not in put.text
        assert [(k["msn"], k["source"]) for k in listing.json()] == [
            ("123456", "configured"),
            (DKK_MSN, "sales_unit"),
        ]
        again = await stack.service.put(
            f"/api/v1/vipps-keys/{DKK_MSN}", json={**DKK_KEYS, "verify": False}, headers=stack.admin
        )
        rotated = again.json()
        assert (rotated["created"], rotated["verified"]) == (False, False)
        assert rotated["rotatedAt"] is not None
        assert rotated["fingerprint"] == added["fingerprint"]  # the same keys again
        services = stack.app.state.services
        async with services.ctx.sessions() as session:
            row = await session.get(VippsKeySet, DKK_MSN)
            assert row is not None
            stored = " ".join((row.client_id_enc, row.client_secret_enc, row.subscription_key_enc))
            entries = list(
                await session.scalars(
                    select(AuditEntry).where(AuditEntry.action.like("vipps_keys.%"))
                )
            )
        for secret in DKK_KEYS.values():
            assert secret not in stored
            assert all(secret not in str(e.detail) for e in entries)
        assert [e.action for e in entries] == ["vipps_keys.add", "vipps_keys.rotate"]
        assert entries[0].detail["fingerprint"] == added["fingerprint"]
        # A sale on the sales unit's keys: they are used, and never logged.
        await stack.ensure_webhook(DKK_MSN)
        await _dkk_sale(stack)
    logged = "".join(capsys.readouterr())
    assert "vipps_keys.saved" in logged
    for secret in DKK_KEYS.values():
        assert secret not in logged


async def test_keys_in_use_by_active_tills_are_not_removed(database_url: str) -> None:
    async with checked_stack(database_url) as stack:
        await stack.add_keys()
        till = await stack.register_till("till-dkk", msn=DKK_MSN)
        in_use = await stack.service.delete(f"/api/v1/vipps-keys/{DKK_MSN}", headers=stack.admin)
        assert_problem(in_use, 409, "vipps_keys_in_use")
        deactivated = await stack.service.post(
            f"/api/v1/tills/{till['tillId']}/deactivate", headers=stack.admin
        )
        assert deactivated.status_code == 200
        gone = await stack.service.delete(f"/api/v1/vipps-keys/{DKK_MSN}", headers=stack.admin)
        assert gone.status_code == 204
        missing = await stack.service.delete(f"/api/v1/vipps-keys/{DKK_MSN}", headers=stack.admin)
        assert_problem(missing, 404, "vipps_keys_not_found")


async def test_partner_keys_cover_every_sales_unit(database_url: str) -> None:
    async with checked_stack(database_url, vipps=PARTNER) as stack:
        listed = (await stack.service.get("/api/v1/vipps-keys", headers=stack.admin)).json()
        assert [(k["msn"], k["source"]) for k in listed] == [(None, "partner")]
        for msn in ("123456", DKK_MSN):
            await stack.ensure_webhook(msn)
        oslo = await stack.register_till("till-oslo", msn="123456")
        assert oslo["qrStatus"] == "SYNCED"
        done = await _dkk_sale(stack)
        assert done["capturedAmount"] == 1500
        # A sales unit outside the partner's merchants is Vipps's to refuse (403 at the QR).
        outside = await _register(stack, "till-x", "777777")
        assert outside.status_code == 201
        assert outside.json()["qrStatus"] == "FAILED"


@pytest.mark.parametrize(
    ("public_url", "reason"),
    [
        ("http://pos.example.com/webhooks/vipps", "HTTPS only"),
        ("https://pos.example.com:8443/webhooks/vipps", "port 8443"),
        ("https://127.0.0.1/webhooks/vipps", "not reachable from the internet"),
    ],
)
async def test_webhooks_ensure_refuses_a_url_real_vipps_would_refuse(
    sqlite_url: str, public_url: str, reason: str
) -> None:
    """Against a real Vipps host, in any environment (these run as ``test``), the URL is
    checked before anything is registered, and the problem names the setting to change."""
    settings = {
        "vipps": {"base_url": "https://apitest.vipps.no"},
        "webhooks": {"public_url": public_url},
    }
    async with checked_stack(sqlite_url, **settings) as stack:
        response = await stack.service.post("/api/v1/webhooks/123456/ensure", headers=stack.admin)
        body = assert_problem(response, 422, "webhook_url_refused")
        assert reason in body["detail"]
        assert "VIPPS_POS_WEBHOOKS__PUBLIC_URL" in body["detail"]
        assert body["errors"][0]["field"] == "VIPPS_POS_WEBHOOKS__PUBLIC_URL"
        assert await ledger(stack, operation="registerWebhook") == []


async def test_a_webhook_url_the_simulator_refuses_names_the_setting_too(sqlite_url: str) -> None:
    settings = {"webhooks": {"public_url": "http://pos.example.com/webhooks/vipps"}}
    async with checked_stack(sqlite_url, **settings) as stack:
        response = await stack.service.post("/api/v1/webhooks/123456/ensure", headers=stack.admin)
        body = assert_problem(response, 422, "webhook_url_refused")
        assert "HTTPS" in body["detail"]
        assert "VIPPS_POS_WEBHOOKS__PUBLIC_URL" in body["detail"]
        # Nothing half-registered is left behind.
        listed = (await stack.service.get("/api/v1/webhooks", headers=stack.admin)).json()
        assert listed == []
