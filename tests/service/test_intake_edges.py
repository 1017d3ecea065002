"""Webhook intake and registration at their edges: check-ins without a usable token, an
operator's retry of kept events, deliveries meeting a shutdown, and registrations that Vipps
refuses, lost, or finished after their marker was purged.

The rules under test: a verified delivery is stored and acknowledged, and is processed once —
inline or, after the lease, by an inbox worker; an event that needs no decision never moves
money; a registration either ends ACTIVE with the secret Vipps signs with, or leaves nothing
behind (no marker, no half-rotation that stops the old secret verifying).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from app.service.context import utcnow
from app.service.errors import VippsRefused
from app.service.intake import INLINE_LANES, INLINE_LEASE
from app.service.webhooks import ALL_EVENTS, PAYMENT_EVENTS
from app.vipps.errors import InvalidParam, VippsRejected
from app.workers.inbox import InboxWorker
from tests.api.support import (
    MSN,
    assert_problem,
    count_rows,
    fetch,
    post_signed_webhook,
    registration_secret,
    sale,
    wait_inbox,
)
from tests.service.support import at_vipps, driven_stack, fault, services
from tests.support.stack import SERVICE_URL, Stack, in_process_stack, simulator_config

OUR_URL = f"{SERVICE_URL}/webhooks/vipps/{MSN}"
FOREIGN_URL = "https://elsewhere.example.com/vipps/hook"


# ---- helpers ------------------------------------------------------------------------------------


def checkin(till: dict[str, Any], token: Any = None) -> dict[str, Any]:
    """A ``user.checked-in.v1`` body as Vipps sends it, for ``till``'s QR code."""
    return {
        "customerToken": f"token-{uuid.uuid4()}" if token is None else token,
        "merchantQrId": till["merchantQrId"],
        "msn": MSN,
        "initiatedAt": datetime.now(UTC).isoformat(),
    }


async def inbox_rows(stack: Stack) -> list[dict[str, Any]]:
    """Every inbox row, oldest first: id, status, outcome, attempts, last_error."""
    return await fetch(
        stack,
        "SELECT id, status, outcome, attempts, last_error, processed_at"
        " FROM webhook_inbox ORDER BY id",
    )


async def registrations(stack: Stack) -> list[tuple[str, str]]:
    """(id, status) of every stored registration of MSN, oldest first."""
    rows = await fetch(
        stack,
        "SELECT id, status FROM webhook_registrations WHERE msn = :msn ORDER BY created_at, id",
        msn=MSN,
    )
    return [(row["id"], row["status"]) for row in rows]


async def at_vipps_hooks(stack: Stack) -> list[dict[str, Any]]:
    """The registrations Vipps (the simulator) holds for MSN."""
    listing = (await stack.sim.get("/_sim/webhooks")).json()
    return [r for r in listing["registrations"] if r["msn"] == MSN]


async def register_elsewhere(stack: Stack, events: list[str]) -> str:
    """Another system on the same sales unit registers a webhook at its own URL."""
    response = await at_vipps(
        stack, "POST", "/webhooks/v1/webhooks", json={"url": FOREIGN_URL, "events": events}
    )
    assert response.status_code == 201, response.text
    hook_id: str = response.json()["id"]
    return hook_id


async def until(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll the (async) ``condition`` until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError("condition never held")
        await asyncio.sleep(0.02)


async def fired(stack: Stack, rule_id: str) -> int:
    rules = (await stack.sim.get("/_sim/faults")).json()["rules"]
    return int(next(rule["fired"] for rule in rules if rule["id"] == rule_id))


async def admin_connection(pg_url: str) -> asyncpg.Connection:
    return await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"))


async def lock_waiters(connection: asyncpg.Connection, at_least: int = 1) -> bool:
    """Whether at least ``at_least`` backends of this database wait on a lock."""
    value = await connection.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    return int(value) >= at_least


def payment_row(rows: list[dict[str, Any]]) -> bool:
    return any(row["reference"] for row in rows)


def inbox_worker(stack: Stack) -> InboxWorker:
    worker: InboxWorker = stack.app.state.workers[1]
    return worker


def past_the_lease(stack: Stack) -> None:
    """Move the service's clock past the inline lease, so an inbox worker may take over."""
    services(stack).ctx.clock = lambda: utcnow() + INLINE_LEASE + timedelta(seconds=2)


# ---- check-ins without a usable token -----------------------------------------------------------


@pytest.mark.parametrize("token", ["", 12345], ids=["empty-token", "token-not-text"])
async def test_a_checkin_without_a_usable_customer_token_is_unmatched_and_changes_nothing(
    database_url: str, token: Any
) -> None:
    async with in_process_stack(database_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till()
        checkout = await stack.checkout(till)

        response = await post_signed_webhook(stack, checkin(till, token))

        assert response.status_code == 200, response.text
        [row] = await wait_inbox(stack, lambda rows: rows and rows[0]["status"] != "PENDING")
        assert (row["eventType"], row["status"], row["outcome"]) == (
            "user.checked-in.v1",
            "UNMATCHED",
            "unmatched",
        )
        # No customer to push the payment request to: the sale still waits for a scan.
        assert await count_rows(stack, "checkins") == 0
        assert (await stack.get(till, checkout["id"]))["state"] == "AWAITING_SCAN"


# ---- an operator's retry of a stored event (WebhookIntake.process) ------------------------------


async def test_retrying_an_event_that_is_settled_or_unknown_is_skipped(
    database_url: str,
) -> None:
    async with in_process_stack(database_url) as stack:
        await stack.ensure_webhook()
        response = await post_signed_webhook(
            stack, {"name": "CREATED", "reference": "nobody-here", "msn": MSN}
        )
        assert response.status_code == 200, response.text
        [before] = await inbox_rows(stack)
        assert before["status"] == "UNMATCHED"
        intake = services(stack).intake

        assert await intake.process(before["id"]) == "skipped"
        assert await intake.process(before["id"] + 1000) == "skipped"

        assert await inbox_rows(stack) == [before]


@pytest.mark.parametrize(
    ("news", "outcome"),
    [
        ({"name": "AUTHORIZED", "success": False}, "unsuccessful_ignored"),
        ({"name": "CAPTURED"}, "signal"),
    ],
    ids=["unsuccessful-authorization", "captured-signal"],
)
async def test_retrying_a_kept_event_that_needs_no_decision_settles_it_and_moves_no_money(
    database_url: str, news: dict[str, Any], outcome: str
) -> None:
    async with in_process_stack(database_url) as stack:
        await stack.ensure_webhook()
        till, sent = await sale(stack)
        # Naming another sales unit than the URL it came to, it is kept FAILED for inspection.
        body = {
            "msn": "654321",
            "reference": sent["reference"],
            "pspReference": f"psp-{uuid.uuid4()}",
            "amount": {"currency": "NOK", "value": 10000},
            "timestamp": datetime.now(UTC).isoformat(),
            **news,
        }
        response = await post_signed_webhook(stack, body)
        assert response.status_code == 200, response.text
        [kept] = [r for r in await wait_inbox(stack, payment_row) if r["reference"]]
        assert kept["status"] == "FAILED"

        assert await services(stack).intake.process(kept["id"]) == outcome

        [row] = [r for r in await wait_inbox(stack, payment_row) if r["id"] == kept["id"]]
        assert (row["status"], row["outcome"], row["lastError"]) == ("PROCESSED", outcome, None)
        after = await stack.get(till, sent["id"])
        assert (after["state"], after["authorizedAmount"], after["capturedAmount"]) == (
            "PAYMENT_REQUESTED",
            0,
            0,
        )
        assert after["version"] == sent["version"]


async def test_retrying_a_kept_object_that_names_no_payment_files_it_unmatched(
    database_url: str,
) -> None:
    async with in_process_stack(database_url) as stack:
        await stack.ensure_webhook()
        response = await post_signed_webhook(stack, {"hello": "world"})
        assert response.status_code == 200, response.text
        [kept] = await wait_inbox(stack, lambda rows: len(rows) == 1)
        assert (kept["eventType"], kept["status"]) == ("unknown", "FAILED")

        assert await services(stack).intake.process(kept["id"]) == "unmatched"

        [row] = await inbox_rows(stack)
        assert (row["status"], row["outcome"], row["last_error"]) == (
            "UNMATCHED",
            "unmatched",
            None,
        )
        assert row["processed_at"] is not None


# ---- deliveries meeting a shutdown --------------------------------------------------------------


async def test_closing_waits_for_a_delivery_being_stored_and_leaves_it_to_the_inbox_worker(
    pg_url: str,
) -> None:
    async with driven_stack(pg_url) as stack:
        till = await stack.register_till()
        checkout = await stack.checkout(till)
        admin = await admin_connection(pg_url)
        try:
            # Hold inserts into the inbox: the delivery's group insert waits for this lock.
            transaction = admin.transaction()
            await transaction.start()
            await admin.execute("LOCK TABLE webhook_inbox IN EXCLUSIVE MODE")
            delivery = asyncio.ensure_future(post_signed_webhook(stack, checkin(till)))
            await until(lambda: lock_waiters(admin))

            closing = asyncio.ensure_future(services(stack).intake.aclose())
            # Closing does not return while a delivery is still being stored.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.shield(closing), 0.3)
            await transaction.commit()
        finally:
            await admin.close()
        await closing

        answer = await delivery
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"status": "accepted"}
        [row] = await inbox_rows(stack)
        assert (row["status"], row["attempts"]) == ("PENDING", 1)
        assert await count_rows(stack, "checkins") == 0

        # The intake closed before it could process the event: after the lease it is the
        # inbox worker's, and the worker finds it still unprocessed.
        past_the_lease(stack)
        assert await inbox_worker(stack).run_once() == 1
        [row] = await inbox_rows(stack)
        assert row["status"] == "PROCESSED"
        assert await count_rows(stack, "checkins") == 1
        assert (await stack.get(till, checkout["id"]))["state"] == "PAYMENT_REQUESTED"


async def test_closing_leaves_queued_events_pending_for_the_inbox_worker(pg_url: str) -> None:
    queued = 2
    # Enough connections for the blocked lanes and the deliveries still being stored.
    async with driven_stack(pg_url, database={"hot_pool_size": 20}) as stack:
        till = await stack.register_till()
        admin = await admin_connection(pg_url)
        try:
            # Hold the till: each lane processing a check-in for it waits on this row lock.
            transaction = admin.transaction()
            await transaction.start()
            await admin.execute("SELECT 1 FROM tills WHERE id = $1 FOR UPDATE", till["tillId"])
            for _ in range(INLINE_LANES + queued):
                response = await post_signed_webhook(stack, checkin(till))
                assert response.status_code == 200, response.text
            await until(lambda: lock_waiters(admin, INLINE_LANES))

            closing = asyncio.ensure_future(services(stack).intake.aclose(grace=10.0))
            await asyncio.sleep(0)  # closing takes the queued events off the queue at once
            await transaction.rollback()
        finally:
            await admin.close()
        await closing

        rows = await inbox_rows(stack)
        assert len(rows) == INLINE_LANES + queued
        # The events being processed finished; those not yet started stay PENDING, untouched.
        assert all(row["status"] != "PENDING" for row in rows[:INLINE_LANES]), rows
        assert [(row["status"], row["attempts"]) for row in rows[INLINE_LANES:]] == [
            ("PENDING", 1)
        ] * queued

        past_the_lease(stack)
        assert await inbox_worker(stack).run_once() == queued
        rows = await inbox_rows(stack)
        assert [row["status"] for row in rows] == ["PROCESSED"] * len(rows), rows
        assert await count_rows(stack, "checkins") == len(rows)


# ---- registrations at Vipps ---------------------------------------------------------------------


async def test_an_acceptable_webhook_url_is_registered_against_a_vipps_host(
    sqlite_url: str,
) -> None:
    """Against a Vipps host the URL is checked first; one Vipps takes is registered."""
    async with in_process_stack(
        sqlite_url, vipps={"base_url": "https://apitest.vipps.no"}
    ) as stack:
        assert services(stack).ctx.settings.vipps.is_vipps_host
        await stack.ensure_webhook()

        [hook] = await at_vipps_hooks(stack)
        assert hook["url"] == OUR_URL
        assert await registrations(stack) == [(hook["id"], "ACTIVE")]
        response = await post_signed_webhook(stack, {"name": "CREATED", "reference": "r-1"})
        assert response.status_code == 200, response.text


async def test_a_rotation_goes_through_when_the_old_registration_is_already_gone_at_vipps(
    database_url: str,
) -> None:
    async with in_process_stack(database_url) as stack:
        await stack.ensure_webhook()
        [(old, _)] = await registrations(stack)
        # Someone deleted it at Vipps (the merchant portal, say); we still hold it ACTIVE.
        gone = await at_vipps(stack, "DELETE", f"/webhooks/v1/webhooks/{old}")
        assert gone.status_code == 204, gone.text

        report = await services(stack).webhooks.rotate(MSN)

        assert old in report.removed
        [hook] = await at_vipps_hooks(stack)
        assert set(hook["events"]) == set(ALL_EVENTS)
        stored = dict(await registrations(stack))
        assert stored[hook["id"]] == "ACTIVE"
        assert stored[old] == "RETIRING"
        assert list(stored.values()).count("ACTIVE") == 1
        accepted = await post_signed_webhook(stack, {"name": "CREATED", "reference": "r-2"})
        assert accepted.status_code == 200, accepted.text


async def test_a_rotation_stops_when_vipps_refuses_to_delete_a_listed_registration(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The simulator deletes every registration it lists; a Vipps that answers 400 to such a
    delete is stood in for here. The rotation stops: the old registration stays ACTIVE and its
    secret keeps verifying, so no delivery is rejected."""
    async with in_process_stack(database_url) as stack:
        await stack.ensure_webhook()
        [(old, _)] = await registrations(stack)
        old_secret = await registration_secret(stack)

        async def refuse(msn: str, webhook_id: str) -> None:
            raise VippsRejected(
                "refused",
                operation="deleteWebhook",
                status=400,
                title="Bad Request",
                invalid_params=(InvalidParam("id", "cannot be deleted now"),),
            )

        monkeypatch.setattr(services(stack).ctx.vipps, "delete_webhook", refuse)

        with pytest.raises(VippsRefused):
            await services(stack).webhooks.rotate(MSN)

        monkeypatch.undo()
        assert old in {hook["id"] for hook in await at_vipps_hooks(stack)}
        assert dict(await registrations(stack))[old] == "ACTIVE"
        accepted = await post_signed_webhook(
            stack, {"name": "CREATED", "reference": "r-3"}, secret=old_secret
        )
        assert accepted.status_code == 200, accepted.text


async def test_a_checkin_registration_held_elsewhere_blocks_ensure_and_registers_nothing(
    database_url: str,
) -> None:
    async with in_process_stack(database_url) as stack:
        foreign = await register_elsewhere(stack, ["user.checked-in.v1"])

        response = await stack.service.post(f"/api/v1/webhooks/{MSN}/ensure", headers=stack.admin)

        body = assert_problem(response, 409, "checkin_webhook_taken")
        assert foreign in body["detail"]
        assert [hook["id"] for hook in await at_vipps_hooks(stack)] == [foreign]
        assert await registrations(stack) == []


async def test_a_registration_vipps_refuses_for_its_events_leaves_no_marker(
    database_url: str,
) -> None:
    config = simulator_config(max_registrations_per_event=1)
    async with in_process_stack(database_url, sim_config=config) as stack:
        # Another system holds a payment event; Vipps allows one holder per event here.
        foreign = await register_elsewhere(stack, [PAYMENT_EVENTS[0]])

        response = await stack.service.post(f"/api/v1/webhooks/{MSN}/ensure", headers=stack.admin)

        body = assert_problem(response, 502, "vipps_refused")
        assert body.get("vippsStatus") == 400, body
        assert [hook["id"] for hook in await at_vipps_hooks(stack)] == [foreign]
        assert await registrations(stack) == []


async def test_a_registration_finishing_after_its_marker_was_purged_is_still_stored(
    database_url: str,
) -> None:
    """The clock jumps two hours while a rotation waits for Vipps, and an ensure meanwhile
    purges the rotation's marker as a crashed registration. Vipps's answer is still stored."""
    async with in_process_stack(database_url) as stack:
        await stack.ensure_webhook()
        [(old, _)] = await registrations(stack)
        slow = await fault(
            stack, kind="latency", operation="registerWebhook", latencyMs=1500, times=1
        )
        webhooks = services(stack).webhooks
        rotation = asyncio.ensure_future(webhooks.rotate(MSN))
        await until(lambda: fired(stack, slow))
        [marker] = [i for i, status in await registrations(stack) if status == "REGISTERING"]

        real_clock = services(stack).ctx.clock
        services(stack).ctx.clock = lambda: real_clock() + timedelta(hours=2)
        report = await webhooks.ensure(MSN)
        assert not rotation.done()
        assert (report.registration_id, report.created, report.purged) == (old, False, (marker,))

        rotated = await rotation
        services(stack).ctx.clock = real_clock

        [hook] = await at_vipps_hooks(stack)
        assert hook["id"] == rotated.registration_id
        assert set(hook["events"]) == set(ALL_EVENTS)
        stored = dict(await registrations(stack))
        assert marker not in stored
        assert stored[hook["id"]] == "ACTIVE"
        assert sorted(status for status in stored.values()) == ["ACTIVE", "RETIRING", "RETIRING"]
        accepted = await post_signed_webhook(stack, {"name": "CREATED", "reference": "r-4"})
        assert accepted.status_code == 200, accepted.text


async def test_a_refused_registration_whose_marker_was_purged_fails_cleanly(
    database_url: str,
) -> None:
    """While one ensure waits for Vipps the clock jumps two hours and a second ensure registers
    first and purges the first one's marker. Vipps refuses the first (check-ins have one
    holder): it fails with a problem, and one ACTIVE registration remains."""
    async with in_process_stack(database_url) as stack:
        slow = await fault(
            stack, kind="latency", operation="registerWebhook", latencyMs=1500, times=1
        )
        webhooks = services(stack).webhooks
        first = asyncio.ensure_future(
            stack.service.post(f"/api/v1/webhooks/{MSN}/ensure", headers=stack.admin)
        )
        await until(lambda: fired(stack, slow))
        [(marker, status)] = await registrations(stack)
        assert status == "REGISTERING"

        real_clock = services(stack).ctx.clock
        services(stack).ctx.clock = lambda: real_clock() + timedelta(hours=2)
        second = await webhooks.ensure(MSN)
        assert not first.done()
        assert second.created
        assert second.purged == (marker,)

        response = await first
        services(stack).ctx.clock = real_clock

        body = assert_problem(response, 502, "vipps_refused")
        assert body.get("vippsStatus") == 400, body
        [hook] = await at_vipps_hooks(stack)
        assert hook["id"] == second.registration_id
        assert await registrations(stack) == [(second.registration_id, "ACTIVE")]
