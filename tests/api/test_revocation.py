"""A revoked credential loses what it holds open, on every replica (issue 18, item 1).

Rotating a till's API key or deactivating the till used to leave the till's SSE stream (forever)
and the display stream (until its token expired, up to 24 h) delivering sales, and long-polls
waiting on. The revocation is now broadcast by the revoking transaction (NOTIFY on Postgres) and
ends them wherever they are. Each stream here must end before its first keep-alive (15 s), the
moment at which a stream would otherwise have re-checked its credential by itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.api.support import assert_problem, sse
from tests.support.stack import Stack, in_process_replicas, in_process_stack

# Well inside the streams' 15 s keep-alive, well outside a NOTIFY round trip.
ENDS_WITHIN = 10.0


async def display_token(stack: Stack, till: dict[str, Any]) -> str:
    response = await stack.service.post(
        f"/api/v1/tills/{till['tillId']}/display-token", headers=stack.till_headers(till)
    )
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


async def test_rotating_a_key_on_one_replica_ends_streams_and_long_polls_on_another(
    pg_url: str,
) -> None:
    async with in_process_replicas(pg_url, 2) as (a, b):
        till = await a.register_till()
        old = a.till_headers(till)
        checkout = await a.checkout(till, 2500)
        token = await display_token(a, till)
        long_poll = asyncio.create_task(
            b.service.get(
                f"/api/v1/checkouts/{checkout['id']}",
                params={"wait": 30, "version": checkout["version"]},
                headers=old,
            )
        )
        async with (
            sse(b.app, f"/api/v1/tills/{till['tillId']}/events", old) as till_stream,
            sse(
                b.app,
                f"/tills/{till['tillId']}/display/events",
                {"Authorization": f"Bearer {token}"},
            ) as display_stream,
        ):
            assert (till_stream.status, display_stream.status) == (200, 200)
            assert (await till_stream.next()).event == "snapshot"
            await display_stream.next()

            rotated = await a.service.post(
                f"/api/v1/tills/{till['tillId']}/api-key", headers=a.admin
            )
            assert rotated.status_code == 200, rotated.text

            await asyncio.wait_for(till_stream.ended.wait(), ENDS_WITHIN)
            await asyncio.wait_for(display_stream.ended.wait(), ENDS_WITHIN)
            assert till_stream.comments == []  # ended by the revocation, not a keep-alive
            assert display_stream.comments == []
            refused = await asyncio.wait_for(long_poll, ENDS_WITHIN)
            assert_problem(refused, 401, "unauthorized")

            # A sale after the rotation reaches neither stream.
            new = {"Authorization": f"Bearer {rotated.json()['apiKey']}"}
            cancelled = await b.service.post(
                f"/api/v1/checkouts/{checkout['id']}/cancel", headers=new
            )
            assert cancelled.status_code == 200, cancelled.text
            assert till_stream.events.empty()

        # Reconnecting with the old credentials is refused; the new key streams.
        async with sse(b.app, f"/api/v1/tills/{till['tillId']}/events", old) as again:
            assert again.status == 401
        async with sse(
            b.app, f"/tills/{till['tillId']}/display/events", {"Authorization": f"Bearer {token}"}
        ) as again:
            assert again.status == 401
        async with sse(b.app, f"/api/v1/tills/{till['tillId']}/events", new) as fresh:
            assert fresh.status == 200
            assert (await fresh.next()).event == "snapshot"


async def test_deactivating_a_till_ends_its_streams_and_wakes_its_long_polls(
    database_url: str,
) -> None:
    """On one replica (and on SQLite) the local signal does it. The deactivated till may still
    read how its sale stands (item 2), so its long-poll is answered, early, with the checkout."""
    async with in_process_stack(database_url, checkout={"max_wait_seconds": 120}) as stack:
        till = await stack.register_till()
        headers = stack.till_headers(till)
        checkout = await stack.checkout(till, 2500)
        long_poll = asyncio.create_task(
            stack.service.get(
                f"/api/v1/checkouts/{checkout['id']}",
                params={"wait": 120, "version": checkout["version"]},
                headers=headers,
            )
        )
        async with sse(stack.app, f"/api/v1/tills/{till['tillId']}/events", headers) as stream:
            assert (await stream.next()).event == "snapshot"
            await asyncio.sleep(0.1)  # the long-poll is waiting
            deactivated = await stack.service.post(
                f"/api/v1/tills/{till['tillId']}/deactivate", headers=stack.admin
            )
            assert deactivated.status_code == 200, deactivated.text
            await asyncio.wait_for(stream.ended.wait(), ENDS_WITHIN)
            assert stream.comments == []
            answered = await asyncio.wait_for(long_poll, ENDS_WITHIN)
            assert answered.status_code == 200, answered.text
            assert answered.json()["id"] == checkout["id"]
        async with sse(stack.app, f"/api/v1/tills/{till['tillId']}/events", headers) as again:
            assert again.status == 409  # till_inactive: a deactivated till does not stream
