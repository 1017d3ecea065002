"""Operator paths at their edges: admin keys refused or cached, Vipps keys per sales unit without
configured keys, encryption-key rotation across pages, tills refused before anything is written,
and QR content Vipps gives late, never, or not to our keys.

Each test goes through a real entry point (the admin API, the CLI, or the service a command
calls) against a real database and the simulator, and checks what was written and what Vipps
was asked.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

import app.service.key_rotation as key_rotation_module
from app.cli import cli
from app.crypto import SecretBox
from app.db import create_engine, create_session_factory
from app.models import AdminKey, AuditEntry, Member, VippsKeySet, WebhookRegistration
from app.notifications import CHANNEL, ChangeHub, admin_key_subject
from app.service.admin_keys import AdminKeyService
from app.service.bootstrap import open_services
from app.service.key_rotation import KeyRotation
from app.service.tills import TillService
from app.settings import DatabaseSettings
from tests.api.support import assert_problem, count_rows, fetch
from tests.support.stack import (
    DKK_KEYS,
    DKK_MSN,
    Stack,
    in_process_stack,
    service_settings,
)
from tests.support.waiting import eventually

T = TypeVar("T")
MSN = "123456"
# The simulator's own keys of sales unit 123456 (the service's configured keys in tests).
OSLO_KEYS = {
    "clientId": "sim-client-id",
    "clientSecret": "sim-client-secret",
    "subscriptionKey": "sim-subscription-key",
}
OLD = "0S9uG8rK4Jmy0-yb7gGi5XJjKb6Y6zUJrPz3DgH5zC4="
NEW = "q2Rk8rbN9Y7l1QkzJwXq1e3bKx6m4a0vC8dT5fH2sUg="
OLA, KARI = "4712345678", "4798765432"
NO_CONFIGURED_KEYS = {"client_id": "", "client_secret": "", "subscription_key": ""}


# ---- helpers ------------------------------------------------------------------------------------


def _in_db(url: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction on its own engine (for tests that drive the CLI, which
    runs its own event loop)."""

    async def main() -> T:
        engine = create_engine(DatabaseSettings(url=url))
        try:
            async with create_session_factory(engine)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def _cli(url: str, *args: str, expect: int) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIPPS_POS_")}
    env |= {"VIPPS_POS_DATABASE__URL": url}
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exit_code == expect, (result.output, result.stderr)
    return result


def _admin_key_rows(url: str) -> list[tuple[str, str]]:
    async def read(session: AsyncSession) -> list[tuple[str, str]]:
        rows = await session.scalars(select(AdminKey).order_by(AdminKey.name))
        return [(row.name, row.roles) for row in rows]

    return _in_db(url, read)


def _audit_actions(url: str, prefix: str) -> list[str]:
    async def read(session: AsyncSession) -> list[str]:
        rows = await session.scalars(
            select(AuditEntry.action)
            .where(AuditEntry.action.like(f"{prefix}%"))
            .order_by(AuditEntry.id)
        )
        return list(rows)

    return _in_db(url, read)


def admin_keys(stack: Stack) -> AdminKeyService:
    service: AdminKeyService = stack.app.state.services.admin_keys
    return service


def tills(stack: Stack) -> TillService:
    service: TillService = stack.app.state.services.tills
    return service


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def fault(stack: Stack, **rule: Any) -> None:
    response = await stack.sim.post("/_sim/faults", json=rule)
    assert response.status_code in (200, 201), response.text


async def clear_faults(stack: Stack) -> None:
    assert (await stack.sim.delete("/_sim/faults")).is_success


async def till_row(stack: Stack, till_id: str) -> dict[str, Any]:
    [row] = await fetch(
        stack,
        "SELECT location_description, qr_status, qr_content, merchant_qr_id FROM tills "
        "WHERE id = :id",
        id=till_id,
    )
    return row


def content_at_vipps(stack: Stack, msn: str, merchant_qr_id: str) -> str:
    """The qrContent the simulator holds for the QR (what Vipps would hand out)."""
    qr = stack.simulator.state.qrs[(msn, merchant_qr_id)]
    return stack.simulator.qr_content(qr.content_id)


def _pg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# ---- admin keys: what the CLI refuses writes nothing ---------------------------------------------


def test_an_admin_key_name_outside_the_allowed_letters_is_refused_and_nothing_written(
    database_url: str,
) -> None:
    refused = _cli(
        database_url, "admin-keys", "create", "ops anna!", "--role", "operator", expect=1
    )
    assert "validation_error" in refused.stderr
    assert "name: 1-40 letters" in refused.stderr
    assert _admin_key_rows(database_url) == []
    assert _audit_actions(database_url, "admin_key.") == []


def test_an_admin_key_without_any_role_is_refused_even_when_roles_are_only_blanks(
    database_url: str,
) -> None:
    for roles in ([], ["--role", " "], ["--role", "", "--role", " "]):
        refused = _cli(database_url, "admin-keys", "create", "ops-anna", *roles, expect=1)
        assert "validation_error" in refused.stderr
        assert "at least one role is required" in refused.stderr
    assert _admin_key_rows(database_url) == []
    assert _audit_actions(database_url, "admin_key.") == []


def test_blank_role_entries_beside_a_real_role_are_ignored(database_url: str) -> None:
    created = _cli(
        database_url,
        "admin-keys",
        "create",
        "ops-anna",
        "--role",
        " ",
        "--role",
        "Operator",
        "--role",
        "",
        "--json",
        expect=0,
    )
    assert json.loads(created.stdout)["roles"] == ["operator"]
    assert _admin_key_rows(database_url) == [("ops-anna", "operator")]
    assert _audit_actions(database_url, "admin_key.") == ["admin_key.create"]


# ---- admin keys: the authentication cache -------------------------------------------------------


async def test_a_key_lookup_that_overlapped_a_revocation_is_not_cached(pg_url: str) -> None:
    """A revocation heard while a key's row is being read may concern that read: the result is
    used once and not kept, so the next request asks the database again. A read no revocation
    overlapped is kept (the control)."""
    async with in_process_stack(pg_url, workers={"enabled": False}) as stack:
        service = admin_keys(stack)
        steady = await service.create("steady", ["operator"])
        raced = await service.create("raced", ["operator"])
        heard: list[str] = []
        stack.app.state.services.ctx.hub.on_revocation(heard.append)

        # Control: a lookup without an overlapping revocation is cached, so a change made
        # behind the service's back (no notification) is not seen within the cache period.
        assert await service.authenticate(steady.key) is not None
        other = await asyncpg.connect(_pg_dsn(pg_url))
        locker = await asyncpg.connect(_pg_dsn(pg_url))
        try:
            await other.execute(
                "UPDATE admin_keys SET revoked_at = now() WHERE id = $1", steady.info.id
            )
            assert await service.authenticate(steady.key) is not None

            # The lookup of ``raced`` waits on a table lock while another replica's revocation
            # (of an unrelated key) is heard here.
            lock = locker.transaction()
            await lock.start()
            await locker.execute("LOCK TABLE admin_keys IN ACCESS EXCLUSIVE MODE")
            lookup = asyncio.ensure_future(service.authenticate(raced.key))

            async def lookup_waits() -> bool:
                waiting = await other.fetchval(
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                    "WHERE c.relname = 'admin_keys' AND NOT l.granted"
                )
                return bool(waiting)

            await eventually(lookup_waits, "the key lookup to wait for the table lock")
            subject = admin_key_subject("0000000000000000")
            await other.execute(
                "SELECT pg_notify($1, $2)", CHANNEL, ChangeHub.revocation_payload(subject)
            )
            await eventually(lambda: subject in heard, "the revocation to be heard")
            await lock.rollback()
            assert await asyncio.wait_for(lookup, 10) is not None

            # ``raced`` is revoked behind the service's back: not cached, so this is seen now.
            await other.execute(
                "UPDATE admin_keys SET revoked_at = now() WHERE id = $1", raced.info.id
            )
            assert await service.authenticate(raced.key) is None
        finally:
            await locker.close()
            await other.close()


async def test_a_flood_of_unknown_admin_key_ids_empties_the_cache_instead_of_growing_it(
    database_url: str,
) -> None:
    async with in_process_stack(database_url, workers={"enabled": False}) as stack:
        service = admin_keys(stack)
        key = await service.create("ops-anna", ["operator"])
        # What 10,001 guessed key ids leave behind: one "no such key" entry each.
        far = time.monotonic() + 3600
        service._cache.update({f"guess{n:05d}": (far, None, None) for n in range(10_001)})

        response = await stack.service.get("/api/v1/tills", headers=bearer(key.key))
        assert response.status_code == 200, response.text
        assert list(service._cache) == [key.info.id]


async def test_a_flood_of_unknown_till_key_ids_empties_the_credential_cache(
    database_url: str,
) -> None:
    async with in_process_stack(database_url, workers={"enabled": False}) as stack:
        till = await stack.register_till()
        service = tills(stack)
        far = time.monotonic() + 3600
        service._credentials.update({f"guess{n:06d}": (far, None) for n in range(100_001)})

        response = await stack.service.get(
            f"/api/v1/tills/{till['tillId']}", headers=stack.till_headers(till)
        )
        assert response.status_code == 200, response.text
        assert list(service._credentials) == [till["apiKeyId"]]


# ---- Vipps keys per sales unit ------------------------------------------------------------------


async def test_without_configured_keys_only_stored_keys_are_listed_and_cover_tills(
    database_url: str,
) -> None:
    async with in_process_stack(
        database_url, vipps=NO_CONFIGURED_KEYS, workers={"enabled": False}
    ) as stack:
        listed = await stack.service.get("/api/v1/vipps-keys", headers=stack.admin)
        assert listed.status_code == 200, listed.text
        assert listed.json() == []

        refused = await stack.service.post(
            "/api/v1/tills",
            json={"tillId": "till-1", "storeId": "s-1", "locationDescription": "Kasse 1"},
            headers=stack.admin,
        )
        body = assert_problem(refused, 422, "msn_not_covered")
        assert body["errors"][0]["field"] == "msn"
        assert await count_rows(stack, "tills") == 0
        assert stack.simulator.state.qrs == {}

        await stack.add_keys(MSN, OSLO_KEYS)
        listed = await stack.service.get("/api/v1/vipps-keys", headers=stack.admin)
        assert [(k["msn"], k["source"]) for k in listed.json()] == [(MSN, "sales_unit")]
        till = await stack.register_till()
        assert till["qrStatus"] == "SYNCED"
        # Its stored keys are all that cover the till now: they stay.
        in_use = await stack.service.delete(f"/api/v1/vipps-keys/{MSN}", headers=stack.admin)
        assert_problem(in_use, 409, "vipps_keys_in_use")
        assert await count_rows(stack, "vipps_key_sets") == 1


async def test_stored_keys_of_an_msn_the_configured_keys_cover_can_go_despite_active_tills(
    database_url: str,
) -> None:
    async with in_process_stack(database_url, workers={"enabled": False}) as stack:
        await stack.add_keys(MSN, OSLO_KEYS)
        till = await stack.register_till()
        removed = await stack.service.delete(f"/api/v1/vipps-keys/{MSN}", headers=stack.admin)
        assert removed.status_code == 204, removed.text
        assert await count_rows(stack, "vipps_key_sets") == 0
        async with stack.app.state.services.ctx.sessions() as session:
            [entry] = (
                await session.scalars(
                    select(AuditEntry).where(AuditEntry.action == "vipps_keys.remove")
                )
            ).all()
        detail = entry.detail
        assert detail["msn"] == MSN
        listed = await stack.service.get("/api/v1/vipps-keys", headers=stack.admin)
        assert [(k["msn"], k["source"]) for k in listed.json()] == [(MSN, "configured")]
        # The till goes on with the configured keys: Vipps takes its changed QR.
        changed = await stack.service.patch(
            f"/api/v1/tills/{till['tillId']}",
            json={"locationDescription": "Kasse ved døra"},
            headers=stack.admin,
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["qrStatus"] == "SYNCED"
        qr = stack.simulator.state.qrs[(MSN, till["merchantQrId"])]
        assert qr.location_description == "Kasse ved døra"


def test_rotating_keys_of_a_sales_unit_without_stored_keys_is_refused(database_url: str) -> None:
    options = [
        *("--client-id", DKK_KEYS["clientId"]),
        *("--client-secret", DKK_KEYS["clientSecret"]),
        *("--subscription-key", DKK_KEYS["subscriptionKey"]),
    ]
    refused = _cli(database_url, "keys", "rotate", DKK_MSN, *options, "--no-verify", expect=1)
    assert "vipps_keys_not_found" in refused.stderr

    async def stored(session: AsyncSession) -> tuple[int, int]:
        sets = await session.scalar(select(VippsKeySet).where(VippsKeySet.msn == DKK_MSN))
        audits = (
            await session.scalars(select(AuditEntry).where(AuditEntry.action.like("vipps_keys.%")))
        ).all()
        return (0 if sets is None else 1), len(audits)

    assert _in_db(database_url, stored) == (0, 0)


# ---- encryption-key rotation --------------------------------------------------------------------


async def test_rotation_pages_through_every_row_and_skips_a_member_merged_away_in_its_page(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages of two rows walk the same keyset paging as pages of 500. Ola enrolled under OLD
    (``m-a``) and again under NEW (``m-b``, later): merging ``m-a`` deletes ``m-b``, which is
    in the same page and must then be passed over, not rotated as if it still existed."""
    monkeypatch.setattr(key_rotation_module, "BATCH", 2)
    old = SecretBox(SecretStr(OLD))
    both = SecretBox(SecretStr(f"{NEW},{OLD}"))
    enrolled = datetime.now(UTC) - timedelta(days=30)
    settings = service_settings(database_url, security={"encryption_key": f"{NEW},{OLD}"})
    async with open_services(settings) as services:
        async with services.ctx.sessions() as session, session.begin():
            session.add_all(
                [
                    Member(
                        id="m-a",
                        phone_hash=old.lookup_hash(OLA),
                        phone_enc=old.encrypt(OLA),
                        vipps_sub=None,
                        name="Ola",
                        store_id="s1",
                        enrolled_at=enrolled,
                    ),
                    Member(
                        id="m-b",
                        phone_hash=both.lookup_hash(OLA),
                        phone_enc=both.encrypt(OLA),
                        vipps_sub="sub-ola",
                        name=None,
                        store_id=None,
                        enrolled_at=enrolled + timedelta(days=10),
                    ),
                    Member(
                        id="m-c",
                        phone_hash=old.lookup_hash(KARI),
                        phone_enc=old.encrypt(KARI),
                        vipps_sub=None,
                        name="Kari",
                        store_id=None,
                        enrolled_at=enrolled,
                    ),
                    *(
                        WebhookRegistration(
                            id=f"reg-{n}",
                            msn=f"10000{n}",
                            url=f"https://pos.test/webhooks/vipps/10000{n}",
                            events=["user.checked-in.v1"],
                            secret_enc=old.encrypt(f"secret-{n}"),
                            status="ACTIVE",
                            created_at=enrolled,
                        )
                        for n in range(3)
                    ),
                ]
            )

        report = await KeyRotation(services.ctx).run(actor="test")

        assert report.reencrypted["webhook_registrations.secret_enc"] == 3
        assert (report.members_merged, report.members_rehashed) == (1, 2)
        assert report.clean
        new_only = SecretBox(SecretStr(NEW))
        async with services.ctx.sessions() as session:
            members = (await session.scalars(select(Member).order_by(Member.id))).all()
            secrets = (
                await session.scalars(
                    select(WebhookRegistration.secret_enc).order_by(WebhookRegistration.id)
                )
            ).all()
            actions = (
                await session.scalars(select(AuditEntry.action).where(AuditEntry.actor == "test"))
            ).all()
        assert [(m.id, m.vipps_sub, m.name, m.store_id) for m in members] == [
            ("m-a", "sub-ola", "Ola", "s1"),
            ("m-c", None, "Kari", None),
        ]
        for member, phone in zip(members, (OLA, KARI), strict=True):
            assert member.phone_hash == new_only.lookup_hash(phone)
            assert new_only.decrypt(member.phone_enc) == phone
        assert [new_only.decrypt(s) for s in secrets] == ["secret-0", "secret-1", "secret-2"]
        assert actions == ["keys.rotate"]


# ---- tills: refused before anything is written --------------------------------------------------


async def test_a_blank_location_is_refused_before_a_till_or_its_qr_is_written(
    database_url: str,
) -> None:
    async with in_process_stack(database_url, workers={"enabled": False}) as stack:
        refused = await stack.service.post(
            "/api/v1/tills",
            json={"tillId": "till-1", "storeId": "store-1", "locationDescription": "   "},
            headers=stack.admin,
        )
        body = assert_problem(refused, 422, "validation_error")
        assert [(e["field"], e["code"]) for e in body["errors"]] == [
            ("locationDescription", "blank")
        ]
        assert await count_rows(stack, "tills") == 0
        assert await count_rows(stack, "stores") == 0
        assert stack.simulator.state.qrs == {}

        till = await stack.register_till()
        before = await till_row(stack, "till-1")
        unchanged = await stack.service.patch(
            "/api/v1/tills/till-1", json={"locationDescription": "\t "}, headers=stack.admin
        )
        body = assert_problem(unchanged, 422, "validation_error")
        assert [(e["field"], e["code"]) for e in body["errors"]] == [
            ("locationDescription", "blank")
        ]
        assert await till_row(stack, "till-1") == before
        assert before["qr_status"] == "SYNCED"
        qr = stack.simulator.state.qrs[(MSN, till["merchantQrId"])]
        assert qr.location_description == "Kasse till-1"
        assert await fetch(stack, "SELECT id FROM audit_log WHERE action = 'till.update'") == []


# ---- tills: QR content Vipps gives late, never, or not to our keys -------------------------------


async def test_qr_content_missing_at_registration_is_fetched_once_and_never_invented(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with in_process_stack(database_url, workers={"enabled": False}) as stack:
        # Vipps answers for the QR without its content (the simulator always has content: this
        # is the one condition it cannot produce by itself).
        monkeypatch.setattr(stack.simulator, "qr_content", lambda content_id: None)
        till = await stack.register_till()
        assert (await till_row(stack, "till-1"))["qr_content"] is None

        refused = await stack.service.get("/api/v1/tills/till-1/qr", headers=stack.admin)
        # Vipps's answer is at fault, not the request.
        assert_problem(refused, 502, "vipps_refused")
        assert "no QR content" in refused.json()["detail"]
        assert (await till_row(stack, "till-1"))["qr_content"] is None

        monkeypatch.undo()
        served = await stack.service.get("/api/v1/tills/till-1/qr", headers=stack.admin)
        assert served.status_code == 200, served.text
        assert served.headers["content-type"].startswith("image/svg+xml")
        expected = content_at_vipps(stack, MSN, till["merchantQrId"])
        assert (await till_row(stack, "till-1"))["qr_content"] == expected

        # Kept: the next image is drawn without asking Vipps, even when Vipps is down.
        await fault(stack, kind="error", status=503, operation="GetMerchantCallbackById")
        again = await stack.service.get("/api/v1/tills/till-1/qr", headers=stack.admin)
        assert again.status_code == 200, again.text
        assert again.content == served.content


async def test_qr_image_with_keys_vipps_refuses_says_the_keys_are_refused(
    database_url: str,
) -> None:
    async with in_process_stack(database_url, workers={"enabled": False}) as stack:
        await stack.add_keys()
        # Vipps does not give the QR's content at registration: the till keeps none.
        await fault(stack, kind="error", status=503, operation="GetMerchantCallbackById", times=100)
        till = await stack.register_till("till-dkk", msn=DKK_MSN)
        await clear_faults(stack)
        assert till["qrStatus"] == "FAILED"
        # The stored keys are then replaced by wrong ones (not tried at Vipps).
        wrong = {**DKK_KEYS, "clientId": "wrong-client-id", "clientSecret": "wrong-secret"}
        replaced = await stack.service.put(
            f"/api/v1/vipps-keys/{DKK_MSN}", json={**wrong, "verify": False}, headers=stack.admin
        )
        assert replaced.status_code == 200, replaced.text

        refused = await stack.service.get("/api/v1/tills/till-dkk/qr", headers=stack.admin)
        assert (await till_row(stack, "till-dkk"))["qr_content"] is None
        # Not a 503: retrying cannot help until an operator fixes the keys.
        assert_problem(refused, 422, "vipps_keys_refused")
        assert "HTTP 401" in refused.json()["detail"]
