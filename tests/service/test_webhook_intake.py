"""Webhook intake when something is off: what cannot be understood, what failed, what Vipps says
did not succeed, a delivery racing its own registration, and secrets past their grace.

The rule under test: a delivery whose signature verifies is stored and acknowledged — never
dropped — and one that does not verify writes nothing. Money never moves on such a delivery.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from app.service.context import utcnow
from app.service.intake import RETIRED_SECRET_GRACE
from app.vipps.signature import format_ms_date, sign_webhook
from tests.api.support import (
    MSN,
    WEBHOOK_HOST,
    assert_problem,
    count_rows,
    post_signed_webhook,
    registration_secret,
    row_counts,
    wait_inbox,
)
from tests.service.support import audit_trail, fault, services
from tests.support.stack import Stack, in_process_stack


async def signed(
    stack: Stack,
    body: bytes,
    *,
    secret: str,
    msn: str = MSN,
    at: datetime | None = None,
) -> httpx.Response:
    """Deliver raw ``body`` signed the way Vipps signs (any body, also one that is not JSON)."""
    headers = sign_webhook(
        secret,
        path_and_query=f"/webhooks/vipps/{msn}",
        host=WEBHOOK_HOST,
        body=body,
        ms_date=format_ms_date(at or datetime.now(UTC)),
    )
    headers["Content-Type"] = "application/json"
    return await stack.service.post(f"/webhooks/vipps/{msn}", content=body, headers=headers)


@pytest.mark.parametrize(
    ("body", "event_type"),
    [
        (b"this is not JSON", "unknown"),
        (b"[1, 2, 3]", "unknown"),
        (b'{"hello": "world"}', "unknown"),
        # A payment event naming another sales unit than the URL it was sent to.
        (
            b'{"name": "AUTHORIZED", "reference": "till-1-x", "msn": "654321"}',
            "epayments.payment.authorized.v1",
        ),
    ],
    ids=["not-json", "not-an-object", "no-event", "other-msn"],
)
async def test_a_verified_body_we_cannot_understand_is_kept_not_dropped(
    database_url: str, body: bytes, event_type: str
) -> None:
    async with in_process_stack(database_url) as stack:
        await stack.ensure_webhook()
        before = await row_counts(stack)

        response = await signed(stack, body, secret=await registration_secret(stack))

        assert response.status_code == 200, response.text
        assert response.json() == {"status": "accepted"}
        [row] = await wait_inbox(stack, lambda rows: len(rows) == 1)
        assert (row["eventType"], row["status"], row["attempts"]) == (event_type, "FAILED", 0)
        assert row["lastError"] == "payload not understood (kept for inspection)"
        after = await row_counts(stack)
        assert after == {**before, "webhook_inbox": before["webhook_inbox"] + 1}


async def test_an_event_vipps_marks_unsuccessful_is_recorded_and_changes_nothing(
    database_url: str,
) -> None:
    async with in_process_stack(database_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till()
        checkout = await stack.checkout(till)
        await stack.scan(till)
        sent = await stack.wait_for(till, checkout["id"], lambda c: c["paymentSent"])

        response = await post_signed_webhook(
            stack,
            {
                "msn": MSN,
                "reference": sent["reference"],
                "pspReference": "psp-unsuccessful-1",
                "name": "AUTHORIZED",
                "amount": {"currency": "NOK", "value": 10000},
                "timestamp": datetime.now(UTC).isoformat(),
                "idempotencyKey": None,
                "success": False,
            },
        )

        assert response.status_code == 200, response.text
        rows = await wait_inbox(stack, lambda rows: any(r["outcome"] for r in rows[:1]))
        assert (rows[0]["status"], rows[0]["outcome"]) == ("PROCESSED", "unsuccessful_ignored")
        after = await stack.get(till, checkout["id"])
        assert (after["state"], after["authorizedAmount"]) == ("PAYMENT_REQUESTED", 0)
        assert after["version"] == sent["version"]
        # The inbox row is the record; an event that changes nothing writes nothing else.
        assert not any(
            actor == "vipps:AUTHORIZED" for actor, _ in await audit_trail(stack, checkout["id"])
        )


async def test_an_event_whose_processing_fails_is_kept_failed_and_retried_later(
    pg_url: str,
) -> None:
    """The database refuses the check-in's write (here a trigger stands in for a full disk or
    a broken constraint). The event is stored (2xx to Vipps), marked FAILED with the error,
    and retried with a growing delay; once the fault is gone a retry processes it."""
    async with in_process_stack(pg_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till()
        checkout = await stack.checkout(till)
        admin = await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            await admin.execute(
                "CREATE FUNCTION refuse_checkins() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN RAISE EXCEPTION 'check-ins refused by test'; END $$;"
                " CREATE TRIGGER refuse_checkins BEFORE INSERT ON checkins"
                " FOR EACH ROW EXECUTE FUNCTION refuse_checkins()"
            )
            before = await row_counts(stack)
            await stack.scan(till)  # Vipps delivers the check-in (the simulator signs it)

            [failed] = await wait_inbox(stack, lambda rows: rows and rows[0]["status"] == "FAILED")
            assert "check-ins refused by test" in failed["lastError"], failed
            # The inbox worker retries it (0.2 s, 0.4 s, ... in tests) and it fails again.
            [retried] = await wait_inbox(stack, lambda rows: rows[0]["attempts"] >= 3)
            assert retried["status"] == "FAILED"
            assert (await stack.get(till, checkout["id"]))["state"] == "AWAITING_SCAN"
            # Nothing but the event itself: no check-in, no till change, no audit entry.
            after = await row_counts(stack)
            assert after == {**before, "webhook_inbox": before["webhook_inbox"] + 1}

            await admin.execute("DROP TRIGGER refuse_checkins ON checkins")
        finally:
            await admin.close()
        [processed] = await wait_inbox(stack, lambda rows: rows[0]["status"] == "PROCESSED")
        assert processed["outcome"], processed
        assert await count_rows(stack, "checkins") == 1
        await stack.wait_for(till, checkout["id"], lambda c: c["paymentSent"])


async def test_a_delivery_signed_with_a_secret_still_being_stored_waits_for_it(
    pg_url: str,
) -> None:
    """Vipps may deliver with a new registration's secret before its answer to the register
    call (which carries that secret) has been stored here. Such a delivery waits for the
    secret instead of being rejected."""
    async with in_process_stack(pg_url) as stack:
        msn = MSN  # a sales unit with keys, not yet registered here
        await fault(stack, kind="latency", operation="registerWebhook", latencyMs=300)
        ensure = asyncio.ensure_future(
            stack.service.post(f"/api/v1/webhooks/{msn}/ensure", headers=stack.admin)
        )
        # Hold the registration marker, so storing the secret waits until this test lets go.
        holder = await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            transaction = holder.transaction()
            await transaction.start()
            marker = await _locked_marker(holder, msn)
            secret = await _secret_at_vipps(stack, msn)
            body = orjson.dumps({"name": "CREATED", "reference": "nobody-1", "msn": msn})
            delivery = asyncio.ensure_future(signed(stack, body, secret=secret, msn=msn))
            # Let the delivery arrive and start waiting (it would wait up to 3 s); it cannot
            # be answered 2xx before the secret is stored, which this lock holds back.
            await asyncio.sleep(0.2)
            assert not delivery.done()
            assert marker.startswith("registering-")
            await transaction.commit()
        finally:
            await holder.close()

        answer = await delivery
        assert answer.status_code == 200, answer.text
        assert (await ensure).status_code == 200
        assert await count_rows(stack, "webhook_inbox") == 1


async def test_a_retired_secret_stops_verifying_after_its_grace_and_is_purged(
    database_url: str,
) -> None:
    async with in_process_stack(database_url) as stack:
        await stack.ensure_webhook()
        old = await registration_secret(stack)
        await services(stack).webhooks.rotate(MSN)
        new = await registration_secret(stack)
        assert new != old
        later = utcnow() + RETIRED_SECRET_GRACE + timedelta(minutes=1)
        services(stack).ctx.clock = lambda: later
        body = orjson.dumps({"name": "CREATED", "reference": "nobody-2", "msn": MSN})

        rejected = await signed(stack, body, secret=old, at=later)
        assert_problem(rejected, 401, "invalid_signature")
        assert await count_rows(stack, "webhook_inbox") == 0
        accepted = await signed(stack, body, secret=new, at=later)
        assert accepted.status_code == 200, accepted.text

        report = await services(stack).webhooks.ensure(MSN)
        assert len(report.purged) == 2  # the old registration and the bridge
        listing = await stack.service.get("/api/v1/webhooks", headers=stack.admin)
        assert [(r["msn"], r["status"]) for r in listing.json()] == [(MSN, "ACTIVE")]


# ---- helpers ------------------------------------------------------------------------------------


async def _locked_marker(connection: Any, msn: str) -> str:
    """Wait for the registration marker of ``msn`` and lock it (FOR UPDATE)."""
    for _ in range(200):
        marker = await connection.fetchval(
            "SELECT id FROM webhook_registrations WHERE msn = $1 AND status = 'REGISTERING'"
            " FOR UPDATE",
            msn,
        )
        if marker is not None:
            return str(marker)
        await asyncio.sleep(0.01)
    raise AssertionError("no registration was started")


async def _secret_at_vipps(stack: Stack, msn: str) -> str:
    """The new registration's secret, read at Vipps (the simulator) as soon as it exists."""
    for _ in range(200):
        listing = (await stack.sim.get("/_sim/webhooks")).json()
        secrets = [r["secret"] for r in listing["registrations"] if r["msn"] == msn]
        if secrets:
            return str(secrets[0])
        await asyncio.sleep(0.01)
    raise AssertionError("Vipps never registered the webhook")
