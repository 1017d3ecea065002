"""How a till learns of changes: long-polling, Server-Sent Events (resumable), and the
reconciler repairing what webhooks never told us."""

from __future__ import annotations

import asyncio
import time

from tests.api.support import checked_stack, drain, effective_calls, payment_sent, sse
from tests.support.waiting import eventually


async def test_long_poll_returns_on_change_and_times_out_otherwise(database_url: str) -> None:
    async with checked_stack(database_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till()
        checkout = await stack.checkout(till, 3000)
        path = f"/api/v1/checkouts/{checkout['id']}"
        headers = stack.till_headers(till)

        started = time.monotonic()
        quiet = await stack.service.get(path, params={"wait": 0.5}, headers=headers)
        assert quiet.status_code == 200
        assert time.monotonic() - started >= 0.45
        assert quiet.json()["version"] == checkout["version"]

        params = {"wait": 20, "version": checkout["version"]}
        waiting = asyncio.create_task(stack.service.get(path, params=params, headers=headers))
        assert stack.replica is not None
        await eventually(lambda: stack.replica.inflight, "the long poll to be inside the service")
        assert not waiting.done()
        started = time.monotonic()
        await stack.scan(till)
        changed = await asyncio.wait_for(waiting, 10)
        assert time.monotonic() - started < 5
        assert changed.json()["version"] > checkout["version"]
        assert changed.json()["state"] == "PAYMENT_REQUESTED"

        # A version already behind answers at once: no change is lost between two polls.
        behind = await stack.service.get(
            path, params={"wait": 20, "version": checkout["version"]}, headers=headers
        )
        assert behind.json()["version"] > checkout["version"]


async def test_sse_streams_changes_and_replays_what_a_reconnect_missed(sqlite_url: str) -> None:
    async with checked_stack(sqlite_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till()
        path = "/api/v1/tills/till-1/events"
        headers = stack.till_headers(till)
        async with sse(stack.app, path, headers) as stream:
            assert stream.status == 200
            snapshot = await stream.next()
            assert snapshot.event == "snapshot"
            assert snapshot.data["checkout"] is None
            checkout = await stack.checkout(till, 4200)
            created = await stream.next()
            assert (created.event, created.data["checkoutId"]) == (
                "checkout.created",
                checkout["id"],
            )
            await stack.scan(till)
            seen = await stream.until(lambda e: e.data["data"].get("event") == "PAYMENT_CREATED")
            last_seen = seen[-1].id
            assert last_seen is not None
            assert seen[0].data["checkout"]["state"] == "PAYMENT_REQUESTED"

        # Disconnected: the sale goes on without the till listening.
        await stack.approve(checkout["reference"])
        await stack.wait_state(till, checkout["id"], "CAPTURED")

        resumed_headers = {**headers, "Last-Event-ID": str(last_seen)}
        async with sse(stack.app, path, resumed_headers) as stream:
            missed = await stream.until(
                lambda e: e.data["data"].get("event") == "CAPTURE_SUCCEEDED"
            )
        assert all(e.event == "checkout.updated" for e in missed)
        ids = [e.id for e in missed if e.id is not None]
        assert len(ids) == len(missed)
        assert ids == sorted(ids)
        assert ids[0] > last_seen
        # Each change says what caused it; the checkout is shown as it is now.
        assert [e.data["data"]["event"] for e in missed] == [
            "VIPPS_AUTHORIZED",
            "CAPTURE_SUCCEEDED",
        ]
        assert missed[-1].data["checkout"]["state"] == "CAPTURED"
        assert missed[-1].data["checkout"]["capturedAmount"] == 4200

        other = await stack.register_till("till-2")
        async with sse(stack.app, path, stack.till_headers(other)) as stream:
            assert stream.status == 403


async def test_missed_webhooks_are_repaired_by_polling(database_url: str) -> None:
    async with checked_stack(database_url) as stack:
        await stack.ensure_webhook()
        till = await stack.register_till()
        checkout = await stack.checkout(till, 8000)
        await stack.scan(till)
        sent = await payment_sent(stack, till, checkout["id"])
        await stack.sim.post("/_sim/webhooks/pause")
        await stack.approve(sent["reference"])
        done = await stack.wait_state(till, checkout["id"], "CAPTURED", timeout=15)
        assert done["capturedAmount"] == 8000
        undelivered = (
            await stack.sim.get("/_sim/deliveries", params={"reference": sent["reference"]})
        ).json()
        assert {d["status"] for d in undelivered} == {"pending"}
        # Late webhooks change nothing.
        await stack.sim.post("/_sim/webhooks/resume")
        await drain(stack)
        assert (await stack.get(till, checkout["id"]))["state"] == "CAPTURED"
        assert (await effective_calls(stack, sent["reference"]))["capturePayment"] == 1

        declined = await stack.checkout(till, 1000)
        await stack.scan(till)
        declined_sent = await payment_sent(stack, till, declined["id"])
        await stack.sim.post("/_sim/webhooks/pause")
        await stack.decline(declined_sent["reference"])
        await stack.wait_state(till, declined["id"], "REJECTED", timeout=15)
        await stack.sim.post("/_sim/webhooks/resume")
