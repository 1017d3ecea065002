"""Throttling across replicas and at every door (issue 18, item 8).

The till limit used to be per replica — a second replica answered 100 more requests right after
the first said 429 — and admin calls, bad-key guesses and forged webhooks were not throttled at
all. Counts are now shared through Postgres once per sync interval (app/throttle.py); the tests
run that sync explicitly instead of waiting for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import httpx
import orjson

from app.throttle import Rule, Throttle
from app.vipps.signature import format_ms_date, sign_webhook
from tests.api.support import MSN, WEBHOOK_HOST, assert_problem, post_signed_webhook
from tests.support.stack import SERVICE_URL, Stack, in_process_replicas

ATTACKER = ("203.0.113.7", 40000)


async def sync(*stacks: Stack) -> None:
    """One sync round on every replica: each has sent its counts and read everyone else's."""
    for _ in range(2):
        for stack in stacks:
            throttle: Throttle = stack.app.state.throttle
            await throttle.sync_once()


@asynccontextmanager
async def from_address(stack: Stack, client: tuple[str, int]) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=stack.app, client=client)
    async with httpx.AsyncClient(transport=transport, base_url=SERVICE_URL) as http:
        yield http


async def test_a_tills_limit_holds_across_replicas(pg_url: str) -> None:
    async with in_process_replicas(pg_url, 2, security={"till_rate_limit_per_minute": 5}) as (
        a,
        b,
    ):
        till = await a.register_till()
        other = await a.register_till("till-2")
        path = "/api/v1/tills/till-1/checkouts/active"
        statuses = [
            (await a.service.get(path, headers=a.till_headers(till))).status_code for _ in range(5)
        ]
        assert statuses == [200] * 5
        await sync(a, b)
        refused = await b.service.get(path, headers=b.till_headers(till))
        assert_problem(refused, 429, "rate_limited")
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert_problem(await a.service.get(path, headers=a.till_headers(till)), 429, "rate_limited")
        # Another till, and the operators, are not slowed down by it.
        calm = await b.service.get(
            "/api/v1/tills/till-2/checkouts/active", headers=b.till_headers(other)
        )
        assert calm.status_code == 200
        assert (await b.service.get("/api/v1/tills", headers=b.admin)).status_code == 200


async def test_an_admin_keys_limit_holds_across_replicas(pg_url: str) -> None:
    async with in_process_replicas(pg_url, 2, security={"admin_rate_limit_per_minute": 4}) as (
        a,
        b,
    ):
        for _ in range(4):
            assert (await a.service.get("/api/v1/tills", headers=a.admin)).status_code == 200
        await sync(a, b)
        assert_problem(await b.service.get("/api/v1/tills", headers=b.admin), 429, "rate_limited")


async def test_bad_key_guesses_from_one_address_back_off_on_every_replica(pg_url: str) -> None:
    async with in_process_replicas(pg_url, 2, security={"auth_failures_per_source": 3}) as (a, b):
        till = await a.register_till()
        path = "/api/v1/tills/till-1/checkouts/active"
        async with from_address(a, ATTACKER) as guesser_a, from_address(b, ATTACKER) as guesser_b:
            for n in range(3):
                guess = {"Authorization": f"Bearer vpk_{n:016x}_not-a-key"}
                assert_problem(await guesser_a.get(path, headers=guess), 401, "unauthorized")
            guess = {"Authorization": "Bearer vpk_0000000000000009_not-a-key"}
            backing_off = await guesser_a.get(path, headers=guess)
            assert_problem(backing_off, 429, "rate_limited")
            await sync(a, b)
            # The other replica makes the address back off too — even a right key from it is
            # not looked at until the pause is over.
            assert_problem(await guesser_b.get(path, headers=guess), 429, "rate_limited")
            right = await guesser_b.get(path, headers=b.till_headers(till))
            assert_problem(right, 429, "rate_limited")
        # The till at its own address is not affected.
        assert (await b.service.get(path, headers=b.till_headers(till))).status_code == 200


async def test_forged_webhooks_from_one_address_back_off_on_every_replica(pg_url: str) -> None:
    async with in_process_replicas(pg_url, 2, security={"webhook_failures_per_source": 3}) as (
        a,
        b,
    ):
        await a.ensure_webhook()
        body = orjson.dumps({"name": "AUTHORIZED", "reference": "r-1", "msn": MSN})
        forged = sign_webhook(
            "not-the-secret",
            path_and_query=f"/webhooks/vipps/{MSN}",
            host=WEBHOOK_HOST,
            body=body,
            ms_date=format_ms_date(datetime.now(UTC)),
        )
        url = f"/webhooks/vipps/{MSN}"
        async with from_address(a, ATTACKER) as forger_a, from_address(b, ATTACKER) as forger_b:
            for _ in range(3):
                assert (await forger_a.post(url, content=body, headers=forged)).status_code == 401
            assert_problem(
                await forger_a.post(url, content=body, headers=forged), 429, "rate_limited"
            )
            await sync(a, b)
            assert_problem(
                await forger_b.post(url, content=body, headers=forged), 429, "rate_limited"
            )
        # Vipps's genuine deliveries (another address) are still taken by both replicas.
        payload = {"name": "CREATED", "reference": "r-2", "msn": MSN, "pspReference": "p"}
        for stack in (a, b):
            genuine = await post_signed_webhook(stack, payload)
            assert genuine.status_code == 200, genuine.text


# ---- the backoff itself, on a clock the test moves ----------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_failures_beyond_the_limit_wait_twice_as_long_each_time_up_to_the_maximum() -> None:
    clock = Clock()
    throttle = Throttle({"f:": Rule(3, 600, backoff_max_seconds=8)}, clock=clock)

    def fail() -> None:
        assert throttle.begin("f:x") == 0
        throttle.end("f:x", failed=True)

    for _ in range(3):
        fail()  # free
    pauses = []
    for _ in range(6):
        pauses.append(throttle.begin("f:x"))
        clock.now += pauses[-1]
        fail()
    assert pauses == [1, 2, 4, 8, 8, 8]
    # A success does not count, and a burst cannot slip through while one attempt is checked.
    clock.now += 8
    assert throttle.begin("f:x") == 0
    assert throttle.begin("f:x") > 0
    throttle.end("f:x", failed=False)
    # Quiet for the whole window: the address starts afresh.
    clock.now += 601
    assert throttle.begin("f:x") == 0


def test_a_busy_honest_address_is_never_refused_for_concurrency_alone() -> None:
    """A store's tills behind one NAT address, a POS vendor's relay, Vipps delivering at peak:
    far more attempts in flight than the free failures, none failing. Each is checked."""
    clock = Clock()
    throttle = Throttle({"f:": Rule(3, 600, backoff_max_seconds=8)}, clock=clock)
    assert [throttle.begin("f:nat") for _ in range(50)] == [0] * 50
    for _ in range(50):
        throttle.end("f:nat", failed=False)
    # Failures below the limit still leave the address unthrottled, however busy.
    for _ in range(2):
        assert throttle.begin("f:nat") == 0
        throttle.end("f:nat", failed=True)
    assert [throttle.begin("f:nat") for _ in range(10)] == [0] * 10
    # A burst started under the limit is checked in full; once the failures reach the limit
    # the backoff holds, one attempt at a time.
    for _ in range(10):
        throttle.end("f:nat", failed=True)
    assert throttle.begin("f:nat") > 0


def test_a_rate_counts_what_it_admits_over_a_sliding_minute() -> None:
    clock = Clock()
    throttle = Throttle({"t:": Rule(2, 60)}, clock=clock)
    assert [throttle.take("t:a"), throttle.take("t:a")] == [0, 0]
    wait = throttle.take("t:a")
    assert 55 <= wait <= 60
    clock.now += wait
    assert throttle.take("t:a") == 0
