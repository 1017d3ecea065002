"""Stateful property test: random sequences of everything tills, customers, Vipps and operators do,
against two replicas of the real service on one Postgres, with the simulator in-process.

Rules: checkouts (auto and manual capture), scans, approvals, declines, expiries, cancels, manual
captures (full and partial), refunds, duplicated / reordered / delayed webhooks, provider faults
(5xx, 429, 423, resets, lost responses) and restarting a replica (its workers and their memory).

Invariants after every step: no 5xx to a till; at most one active checkout per till; captured ≤
authorized and refunded ≤ captured, ours and Vipps's; we never record more than Vipps did; the
ledger shows no duplicate create and no idempotency key with two effects, and never more than 5
mutating calls per minute per reference. At the end of each example (faults cleared) every
checkout is driven to a final state, the outbox drains, and each checkout equals the simulator's
payment. Long version (``VIPPS_POS_SOAK=1``): 500 examples.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import text

from app.db import create_engine
from app.main import create_app
from app.settings import DatabaseSettings
from app.simulator import Simulator, create_simulator_app
from tests.reliability.support import (
    FINAL_STATES,
    assert_ledger_clean,
    consistent_with_vipps,
    scaled,
)
from tests.support.databases import truncate_all
from tests.support.stack import (
    ADMIN_KEY,
    SERVICE_URL,
    SIM_URL,
    Replica,
    RoundRobin,
    service_settings,
    simulator_config,
)

pytestmark = [pytest.mark.soak, pytest.mark.timeout(scaled(300, 6 * 3600))]

T = TypeVar("T")
MSN = "123456"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
TILLS = ("sm-till-a", "sm-till-b")
ACTIVE = (
    "AWAITING_SCAN",
    "IDENTIFYING",
    "AWAITING_POS_UPDATE",
    "PAYMENT_REQUESTED",
    "CANCELLING",
    "AUTHORIZED",
)


class TwoReplicas:
    """Two service apps on one database and one simulator, each restartable.

    Each app runs as a :class:`Replica`: a restart refuses new requests, lets those inside the
    app finish and only then shuts its lifespan down, as uvicorn does; webhook deliveries
    alternate between the replicas and skip one that is restarting (:class:`RoundRobin`).
    """

    def __init__(self, database_url: str) -> None:
        self.settings = service_settings(
            database_url,
            checkout={"max_wait_seconds": 3},
            workers={"outbox_lease_seconds": 5},
            database={"url": database_url, "pool_size": 5, "max_overflow": 5},
        )
        self.sim_app = create_simulator_app(simulator_config(fault_seed=7))
        self.simulator: Simulator = self.sim_app.state.simulator
        self.replicas = [
            Replica(
                create_app(self.settings, vipps_transport=httpx.ASGITransport(app=self.sim_app)),
                f"replica-{index}",
            )
            for index in range(2)
        ]
        self.simulator.webhooks.set_transport(RoundRobin(self.replicas))
        self.outer = AsyncExitStack()
        self.clients = [
            httpx.AsyncClient(transport=r.transport, base_url=SERVICE_URL) for r in self.replicas
        ]
        self.sim = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.sim_app), base_url=SIM_URL
        )
        self.engine = create_engine(DatabaseSettings(url=database_url, pool_size=2))

    async def start(self) -> None:
        await self.outer.enter_async_context(self.sim_app.router.lifespan_context(self.sim_app))
        for replica in self.replicas:
            await replica.start()

    async def restart_replica(self, index: int) -> None:
        await self.replicas[index].restart()

    async def stop(self) -> None:
        for client in [*self.clients, self.sim]:
            await client.aclose()
        for replica in self.replicas:
            await replica.stop()
        await self.outer.aclose()
        await self.simulator.aclose()
        await self.engine.dispose()

    async def rows(self, sql: str) -> list[Any]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(text(sql))).all())


class CheckoutMachine(RuleBasedStateMachine):
    database_url: str = ""
    loop: asyncio.AbstractEventLoop

    def __init__(self) -> None:
        super().__init__()
        self.run(truncate_all(self.database_url))
        self.stack = TwoReplicas(self.database_url)
        self.run(self.stack.start())
        self.tills: list[dict[str, Any]] = []
        self.checkouts: dict[str, dict[str, Any]] = {}  # id -> till
        self.server_errors: list[str] = []
        self.run(self._setup())

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    async def _setup(self) -> None:
        client = self.stack.clients[0]
        assert (await client.post(f"/api/v1/webhooks/{MSN}/ensure", headers=ADMIN)).is_success
        for till_id in TILLS:
            response = await client.post(
                "/api/v1/tills",
                json={"tillId": till_id, "storeId": "store-1", "locationDescription": till_id},
                headers=ADMIN,
            )
            assert response.status_code == 201, response.text
            self.tills.append(response.json())

    # ---- helpers ---------------------------------------------------------------------------

    def headers(self, till: dict[str, Any], key: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {till['apiKey']}"}
        if key:
            headers["Idempotency-Key"] = key
        return headers

    def note(self, what: str, response: httpx.Response, allowed: set[int]) -> None:
        if response.status_code >= 500 or response.status_code not in allowed:
            self.server_errors.append(f"{what}: {response.status_code} {response.text[:300]}")

    async def _ours(self) -> list[dict[str, Any]]:
        found = []
        for checkout_id, till in self.checkouts.items():
            response = await self.stack.clients[0].get(
                f"/api/v1/checkouts/{checkout_id}", headers=self.headers(till)
            )
            assert response.status_code == 200, response.text
            found.append(response.json())
        return found

    async def _pick(self, index: int, predicate: Any) -> dict[str, Any] | None:
        matching = [c for c in await self._ours() if predicate(c)]
        return matching[index % len(matching)] if matching else None

    async def _sim_payment(self, reference: str) -> dict[str, Any] | None:
        response = await self.stack.sim.get(f"/_sim/payments/{reference}")
        return response.json() if response.status_code == 200 else None

    # ---- rules -----------------------------------------------------------------------------

    @rule(
        till=st.integers(0, 1),
        amount=st.sampled_from([1000, 4990, 12900]),
        manual=st.booleans(),
        replica=st.integers(0, 1),
    )
    def create_checkout(self, till: int, amount: int, manual: bool, replica: int) -> None:
        async def go() -> None:
            owner = self.tills[till]
            response = await self.stack.clients[replica].post(
                f"/api/v1/tills/{owner['tillId']}/checkouts",
                json={
                    "amount": amount,
                    "currency": "NOK",
                    "captureMode": "MANUAL" if manual else "AUTO",
                },
                headers=self.headers(owner),
            )
            self.note("create", response, {201, 409})
            if response.status_code == 201:
                self.checkouts[response.json()["id"]] = owner
            elif response.status_code == 409:
                assert response.json()["code"] == "active_checkout_exists", response.text

        self.run(go())

    @rule(till=st.integers(0, 1))
    def scan(self, till: int) -> None:
        response = self.run(
            self.stack.sim.post(f"/_sim/qr/{self.tills[till]['merchantQrId']}/scan", json={})
        )
        assert response.status_code == 200, response.text

    @rule(index=st.integers(0, 5), answer=st.sampled_from(["approve", "decline", "expire"]))
    def customer_answers(self, index: int, answer: str) -> None:
        async def go() -> None:
            pending = []
            for checkout in await self._ours():
                payment = await self._sim_payment(checkout["reference"])
                if payment is not None and payment["state"] == "CREATED":
                    pending.append(checkout["reference"])
            if pending:
                reference = pending[index % len(pending)]
                await self.stack.sim.post(f"/_sim/payments/{reference}/{answer}", json={})

        self.run(go())

    @rule(index=st.integers(0, 5), replica=st.integers(0, 1))
    def cancel(self, index: int, replica: int) -> None:
        async def go() -> None:
            checkout = await self._pick(index, lambda c: c["state"] in ACTIVE)
            if checkout is None:
                return
            response = await self.stack.clients[replica].post(
                f"/api/v1/checkouts/{checkout['id']}/cancel",
                headers=self.headers(self.checkouts[checkout["id"]]),
            )
            self.note("cancel", response, {200, 409})

        self.run(go())

    @rule(
        index=st.integers(0, 5), part=st.sampled_from([None, 0.5, 1.5]), replica=st.integers(0, 1)
    )
    def capture(self, index: int, part: float | None, replica: int) -> None:
        async def go() -> None:
            checkout = await self._pick(
                index, lambda c: c["captureMode"] == "MANUAL" and c["state"] == "AUTHORIZED"
            )
            if checkout is None:
                return
            body = {} if part is None else {"amount": int(checkout["authorizedAmount"] * part)}
            response = await self.stack.clients[replica].post(
                f"/api/v1/checkouts/{checkout['id']}/capture",
                json=body,
                headers=self.headers(self.checkouts[checkout["id"]], f"cap-{time.time_ns()}"),
            )
            self.note("capture", response, {200, 409, 422})

        self.run(go())

    @rule(
        index=st.integers(0, 5), part=st.sampled_from([None, 0.3, 2.0]), replica=st.integers(0, 1)
    )
    def refund(self, index: int, part: float | None, replica: int) -> None:
        async def go() -> None:
            checkout = await self._pick(
                index, lambda c: c["state"] in ("CAPTURED", "PARTIALLY_REFUNDED")
            )
            if checkout is None:
                return
            body = (
                {} if part is None else {"amount": max(1, int(checkout["capturedAmount"] * part))}
            )
            response = await self.stack.clients[replica].post(
                f"/api/v1/checkouts/{checkout['id']}/refund",
                json=body,
                headers=self.headers(self.checkouts[checkout["id"]], f"ref-{time.time_ns()}"),
            )
            self.note("refund", response, {200, 409, 422})

        self.run(go())

    @rule(
        kind=st.sampled_from(["webhook_duplicate", "webhook_reorder", "webhook_delay"]),
        times=st.integers(1, 3),
    )
    def webhook_fault(self, kind: str, times: int) -> None:
        rule_body = {"kind": kind, "event": "*", "times": times, "delaySeconds": 0.4}
        response = self.run(self.stack.sim.post("/_sim/faults", json=rule_body))
        assert response.status_code == 201, response.text

    @rule(
        operation=st.sampled_from(
            ["createPayment", "capturePayment", "cancelPayment", "refundPayment", "getPayment"]
        ),
        fault=st.sampled_from(
            [
                {"kind": "error", "status": 500},
                {"kind": "error", "status": 503, "retryAfter": 1},
                {"kind": "error", "status": 429, "retryAfter": 1},
                {"kind": "error", "status": 423},
                {"kind": "reset"},
                {"kind": "drop_response"},
            ]
        ),
        times=st.integers(1, 2),
    )
    def provider_fault(self, operation: str, fault: dict[str, Any], times: int) -> None:
        rule_body = {**fault, "operation": operation, "times": times}
        response = self.run(self.stack.sim.post("/_sim/faults", json=rule_body))
        assert response.status_code == 201, response.text

    @rule()
    def clear_faults(self) -> None:
        self.run(self.stack.sim.delete("/_sim/faults"))

    @rule(replica=st.integers(0, 1))
    def restart_replica(self, replica: int) -> None:
        self.run(self.stack.restart_replica(replica))

    @rule(seconds=st.sampled_from([0.2, 1.0]))
    def time_passes(self, seconds: float) -> None:
        self.run(asyncio.sleep(seconds))

    # ---- invariants ------------------------------------------------------------------------

    @invariant()
    def holds(self) -> None:
        self.run(self._check())

    async def _check(self) -> None:
        assert self.server_errors == [], self.server_errors
        busy = await self.stack.rows(
            "SELECT till_id, count(*) FROM checkouts WHERE state IN "
            f"({', '.join(repr(s) for s in ACTIVE)}) GROUP BY till_id HAVING count(*) > 1"
        )
        assert busy == [], f"more than one active checkout: {busy}"
        ledger = (await self.stack.sim.get("/_sim/ledger")).json()
        assert_ledger_clean(ledger)
        for ours in await self._ours():
            assert ours["capturedAmount"] <= ours["authorizedAmount"], ours
            assert ours["refundedAmount"] <= ours["capturedAmount"], ours
            theirs = await self._sim_payment(ours["reference"])
            if theirs is None:
                assert ours["capturedAmount"] == 0, ours
                continue
            aggregate = {k: v["value"] for k, v in theirs["aggregate"].items()}
            assert aggregate["capturedAmount"] <= aggregate["authorizedAmount"], theirs
            assert aggregate["refundedAmount"] <= aggregate["capturedAmount"], theirs
            assert aggregate["capturedAmount"] <= ours["amount"]["value"], (ours, theirs)
            # We only ever record what Vipps confirmed.
            assert ours["capturedAmount"] <= aggregate["capturedAmount"], (ours, theirs)
            assert ours["refundedAmount"] <= aggregate["refundedAmount"], (ours, theirs)

    # ---- the end of an example: quiescence ------------------------------------------------------

    def teardown(self) -> None:
        try:
            self.run(self._quiesce())
        finally:
            self.run(self.stack.stop())

    async def _quiesce(self, timeout: float = 120.0) -> None:
        await self.stack.sim.delete("/_sim/faults")
        deadline = time.monotonic() + timeout
        while True:
            ours = await self._ours()
            pending = await self.stack.rows(
                "SELECT count(*) FROM outbox WHERE status IN ('PENDING', 'IN_FLIGHT')"
            )
            if all(c["state"] in FINAL_STATES for c in ours) and pending[0][0] == 0:
                break
            assert time.monotonic() < deadline, (
                f"not final after {timeout}s: {[(c['state'], c['reference']) for c in ours]}"
            )
            for checkout in ours:
                await self._nudge(checkout)
            await asyncio.sleep(0.5)
        await self._check()
        for checkout in await self._ours():
            theirs = await self._sim_payment(checkout["reference"])
            assert consistent_with_vipps(checkout, theirs) is None, (
                consistent_with_vipps(checkout, theirs),
                checkout,
                theirs,
            )
        violations = (await self.stack.sim.get("/_sim/violations")).json()["violations"]
        assert violations == [], violations

    async def _nudge(self, checkout: dict[str, Any]) -> None:
        """What a till or a customer eventually does with a checkout that is still open."""
        till = self.checkouts[checkout["id"]]
        client = self.stack.clients[0]
        state = checkout["state"]
        if state == "AWAITING_SCAN":
            await client.post(
                f"/api/v1/checkouts/{checkout['id']}/cancel", headers=self.headers(till)
            )
        elif state == "PAYMENT_REQUESTED":
            payment = await self._sim_payment(checkout["reference"])
            if payment is not None and payment["state"] == "CREATED":
                await self.stack.sim.post(
                    f"/_sim/payments/{checkout['reference']}/approve", json={}
                )
        elif state == "AUTHORIZED" and checkout["captureMode"] == "MANUAL":
            await client.post(
                f"/api/v1/checkouts/{checkout['id']}/capture",
                json={},
                headers=self.headers(till, f"final-{checkout['id']}"),
            )


def test_random_operations_keep_money_and_state_consistent(postgres_url: str) -> None:
    CheckoutMachine.database_url = postgres_url
    CheckoutMachine.loop = asyncio.new_event_loop()
    try:
        run_state_machine_as_test(
            CheckoutMachine,
            settings=settings(
                max_examples=scaled(3, 500, override="STATEFUL_EXAMPLES"),
                stateful_step_count=scaled(12, 30),
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=False,
                print_blob=True,
            ),
        )
    finally:
        CheckoutMachine.loop.run_until_complete(truncate_all(postgres_url))
        CheckoutMachine.loop.close()
