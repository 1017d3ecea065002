"""Who may do what: a deactivated till's key (issue 18, item 2) and named admin keys with roles
(item 11). The rules live in one place, ``app/api/deps.py`` ``check_access``; these tests go
through every route they govern.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import app.service.admin_keys as admin_keys_module
from app.crypto import hash_api_key
from app.service.admin_keys import AdminKeyService
from tests.api.support import assert_problem, fetch, payment_sent, sse
from tests.support.stack import Stack, in_process_replicas, in_process_stack


def admin_keys(stack: Stack) -> AdminKeyService:
    service: AdminKeyService = stack.app.state.services.admin_keys
    return service


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def captured_sale(stack: Stack, till: dict[str, Any], amount: int = 5000) -> dict[str, Any]:
    checkout = await stack.checkout(till, amount)
    await stack.scan(till)
    sent = await payment_sent(stack, till, checkout["id"])
    await stack.approve(sent["reference"])
    return await stack.wait_state(till, checkout["id"], "CAPTURED")


async def refunded_at_vipps(stack: Stack, reference: str) -> int:
    payment = (await stack.sim.get(f"/_sim/payments/{reference}")).json()
    value: int = payment["aggregate"]["refundedAmount"]["value"]
    return value


# ---- item 2: a deactivated till -----------------------------------------------------------------


async def test_a_deactivated_tills_key_may_read_and_cancel_but_never_move_money(
    database_url: str,
) -> None:
    async with in_process_stack(database_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till()
        headers = stack.till_headers(till)
        sale = await captured_sale(stack, till)
        open_sale = await stack.checkout(till, 1500)
        money = await admin_keys(stack).create("refunds", ["money"])
        deactivated = await stack.service.post(
            "/api/v1/tills/till-1/deactivate", headers=stack.admin
        )
        assert deactivated.status_code == 200, deactivated.text

        # Still allowed: learn how its sales stand, call off the unfinished one.
        for path in (
            f"/api/v1/checkouts/{sale['id']}",
            f"/api/v1/checkouts/{sale['id']}?wait=0.2",
            "/api/v1/tills/till-1",
            "/api/v1/tills/till-1/checkouts/active",
        ):
            response = await stack.service.get(path, headers=headers)
            assert response.status_code == 200, (path, response.text)
        cancelled = await stack.service.post(
            f"/api/v1/checkouts/{open_sale['id']}/cancel", headers=headers
        )
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"] == "CANCELLED"

        # Refused, each with the code integrators know for a deactivated till.
        refused = [
            ("POST", "/api/v1/tills/till-1/checkouts", {"amount": 1000, "currency": "NOK"}),
            ("POST", f"/api/v1/checkouts/{sale['id']}/refund", {"amount": 1000}),
            ("POST", f"/api/v1/checkouts/{sale['id']}/capture", {}),
            ("POST", f"/api/v1/checkouts/{sale['id']}/member-price", {"amount": 900}),
            ("GET", "/api/v1/tills/till-1/qr", None),
            ("POST", "/api/v1/tills/till-1/display-token", None),
        ]
        for method, path, body in refused:
            response = await stack.service.request(method, path, json=body, headers=headers)
            assert_problem(response, 409, "till_inactive")
        async with sse(stack.app, "/api/v1/tills/till-1/events", headers) as stream:
            assert stream.status == 409
        assert await refunded_at_vipps(stack, sale["reference"]) == 0

        # The refund of that sale is an operator's job now (money role).
        by_operator = await stack.service.post(
            f"/api/v1/checkouts/{sale['id']}/refund",
            json={"amount": 1000},
            headers=bearer(money.key),
        )
        assert by_operator.status_code == 200, by_operator.text
        assert by_operator.json()["refundedAmount"] == 1000
        assert await refunded_at_vipps(stack, sale["reference"]) == 1000


# ---- item 11: named admin keys with roles -------------------------------------------------------


async def test_named_admin_keys_act_within_their_roles_and_the_audit_trail_names_them(
    database_url: str,
) -> None:
    async with in_process_stack(database_url, security={"metrics": "admin"}) as stack:
        await stack.ensure_webhook()
        keys = admin_keys(stack)
        operator = await keys.create("ops-anna", ["operator"])
        money = await keys.create("finance-bo", ["money"])
        monitor = await keys.create("prometheus", ["monitor"])
        assert operator.key.startswith(f"vpa_{operator.info.id}_")

        # Stored hashed, never in clear.
        rows = await fetch(stack, "SELECT id, name, roles, key_hash FROM admin_keys ORDER BY name")
        assert {r["name"]: r["roles"] for r in rows} == {
            "finance-bo": "money",
            "ops-anna": "operator",
            "prometheus": "monitor",
        }
        for row, new in zip(rows, (money, operator, monitor), strict=True):
            assert row["key_hash"] == hash_api_key(new.key)
            assert new.key not in str(row)

        # The operator runs tills; the till rings up; money moves only with the money role.
        registered = await stack.service.post(
            "/api/v1/tills",
            json={"tillId": "till-1", "storeId": "store-1", "locationDescription": "Kasse 1"},
            headers=bearer(operator.key),
        )
        assert registered.status_code == 201, registered.text
        till = registered.json()
        qr = await stack.service.get("/api/v1/tills/till-1/qr", headers=bearer(operator.key))
        assert qr.status_code == 200
        sale = await captured_sale(stack, till)
        refund = f"/api/v1/checkouts/{sale['id']}/refund"
        assert_problem(
            await stack.service.post(refund, json={"amount": 500}, headers=bearer(operator.key)),
            403,
            "forbidden",
        )
        by_money = await stack.service.post(refund, json={"amount": 500}, headers=bearer(money.key))
        assert by_money.status_code == 200, by_money.text
        for path in ("/api/v1/tills", "/api/v1/inbox", "/api/v1/drift", "/metrics"):
            assert_problem(
                await stack.service.get(path, headers=bearer(money.key)), 403, "forbidden"
            )
        listed = await stack.service.get("/api/v1/checkouts", headers=bearer(money.key))
        assert listed.status_code == 200  # finding the sale to refund
        metrics = await stack.service.get("/metrics", headers=bearer(monitor.key))
        assert metrics.status_code == 200
        assert_problem(await stack.service.get("/metrics"), 401, "unauthorized")
        assert_problem(
            await stack.service.get("/api/v1/tills", headers=bearer(monitor.key)), 403, "forbidden"
        )

        # Each action names the key that did it.
        trail = await fetch(
            stack,
            "SELECT actor, action FROM audit_log"
            " WHERE action IN ('till.register', 'refund_requested') ORDER BY id",
        )
        assert [(row["action"], row["actor"]) for row in trail] == [
            ("till.register", f"admin:ops-anna/{operator.info.id}"),
            ("refund_requested", f"admin:finance-bo/{money.info.id}"),
        ]


async def test_a_revoked_admin_key_is_refused_at_once_on_every_replica(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the revocation can clear what a replica cached: its cache would otherwise hold an
    # hour (the real one holds a few seconds).
    monkeypatch.setattr(admin_keys_module, "CACHE_SECONDS", 3600.0)
    async with in_process_replicas(pg_url, 2) as (a, b):
        await a.ensure_webhook()
        till = await a.register_till()
        sale = await captured_sale(a, till)
        new = await admin_keys(a).create("finance", ["money", "operator"])
        key = bearer(new.key)
        assert (await b.service.get("/api/v1/tills", headers=key)).status_code == 200  # cached
        waiting = asyncio.create_task(
            b.service.get(
                f"/api/v1/checkouts/{sale['id']}",
                params={"wait": 30, "version": sale["version"]},
                headers=key,
            )
        )
        await asyncio.sleep(0.1)

        await admin_keys(a).revoke("finance")

        assert_problem(await asyncio.wait_for(waiting, 10), 401, "unauthorized")
        for stack in (a, b):
            refused = await stack.service.post(
                f"/api/v1/checkouts/{sale['id']}/refund", json={"amount": 100}, headers=key
            )
            assert_problem(refused, 401, "unauthorized")
        assert await refunded_at_vipps(a, sale["reference"]) == 0
        listed = [k.name for k in await admin_keys(b).list(include_revoked=True)]
        assert listed == ["finance"]
        # The bootstrap key from the settings keeps working (and is named "admin").
        assert (await b.service.get("/api/v1/tills", headers=b.admin)).status_code == 200
