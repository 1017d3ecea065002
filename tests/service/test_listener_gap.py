"""A replica whose LISTEN connection dropped hears nothing until it listens again. What other
replicas announced in that gap must still reach its waiters: the hub forgets once more when it
listens again, so every waiter re-reads."""

from __future__ import annotations

import asyncio
import contextlib

from app.notifications import ChangeHub, checkout_key
from tests.service.support import drop_listen_connections, services, till_post
from tests.support.stack import in_process_replicas
from tests.support.waiting import eventually


async def test_a_change_made_elsewhere_while_the_listener_was_down_wakes_the_long_poll(
    pg_url: str,
) -> None:
    async with in_process_replicas(pg_url, 2) as (here, elsewhere):
        hub: ChangeHub = services(here).ctx.hub
        till = await here.register_till()
        checkout = await here.checkout(till)
        poll = asyncio.ensure_future(
            here.get(till, checkout["id"], wait=20, version=checkout["version"])
        )
        try:
            await eventually(lambda: checkout_key(checkout["id"]) in hub._events, "a waiter")
            # Both replicas lose their LISTEN connection (the database dropped them).
            assert await drop_listen_connections(here) == 2
            await eventually(lambda: hub.latest(checkout["id"]) is None, "the loss noticed")
            # While this replica is not listening, the other one ends the sale.
            cancelled = await till_post(elsewhere, till, checkout["id"], "cancel")
            assert cancelled.status_code == 200, cancelled.text

            # Heard of it once listening again, well before the long-poll's own timeout.
            answer = await asyncio.wait_for(poll, 8)
        finally:
            if not poll.done():
                poll.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poll
        assert answer["state"] == "CANCELLED"
        assert answer["version"] == cancelled.json()["version"]
