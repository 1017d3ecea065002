"""The CLI against a live stack: the simulator over HTTP, the service as a real process, Postgres.

One simulator and one service process serve the whole module; after each test the database is
emptied and the simulator reset, so every test starts from nothing. Tests are plain functions:
the CLI runs its own event loop (``asyncio.run``), as it does for an operator.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from app.cli import cli
from app.devstack import BackgroundServer
from tests.support.databases import truncate_all
from tests.support.live import ADMIN_KEY, ServiceProcess, live_simulator, service_environment


@dataclass
class LiveStack:
    simulator: BackgroundServer
    service: ServiceProcess
    env: dict[str, str]
    sim: httpx.Client
    api: httpx.Client

    def run(self, *args: str, expect: int | None = 0) -> Result:
        result = CliRunner().invoke(cli, list(args), env=self.env, catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, (result.exit_code, result.output, result.stderr)
        return result

    def run_json(self, *args: str, expect: int | None = 0) -> Any:
        return json.loads(self.run(*args, "--json", expect=expect).stdout)

    def till_headers(self, till: dict[str, Any]) -> dict[str, str]:
        return {"Authorization": f"Bearer {till['apiKey']}"}

    def wait_checkout(
        self, till: dict[str, Any], checkout_id: str, done: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        current: dict[str, Any] = {}
        while time.monotonic() < deadline:
            current = self.api.get(
                f"/api/v1/checkouts/{checkout_id}",
                params={"wait": 1, **({"version": current["version"]} if current else {})},
                headers=self.till_headers(till),
            ).json()
            if done(current):
                return current
        raise AssertionError(f"checkout never got there: {current}")

    def sale(self, till: dict[str, Any], amount: int = 5000, **body: Any) -> dict[str, Any]:
        """Ring up, scan, approve: returns the captured checkout."""
        created = self.api.post(
            f"/api/v1/tills/{till['tillId']}/checkouts",
            json={"amount": amount, "currency": "NOK", **body},
            headers=self.till_headers(till),
        )
        assert created.status_code == 201, created.text
        checkout = created.json()
        assert self.sim.post(f"/_sim/qr/{till['merchantQrId']}/scan", json={}).status_code == 200
        sent = self.wait_checkout(till, checkout["id"], lambda c: c["paymentSent"])
        approve = self.sim.post(f"/_sim/payments/{sent['reference']}/approve", json={})
        assert approve.status_code == 200, approve.text
        return self.wait_checkout(till, checkout["id"], lambda c: c["state"] == "CAPTURED")

    def vipps(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Call the simulator's Vipps API directly, as another system on the MSN would."""
        token = self.sim.post(
            "/accesstoken/get",
            headers={
                "client_id": "sim-client-id",
                "client_secret": "sim-client-secret",
                "Ocp-Apim-Subscription-Key": "sim-subscription-key",
            },
        ).json()["access_token"]
        headers = {
            "Authorization": f"Bearer {token}",
            "Ocp-Apim-Subscription-Key": "sim-subscription-key",
            "Merchant-Serial-Number": "123456",
        }
        return self.sim.request(method, path, headers=headers, **kwargs)


@pytest.fixture(scope="module")
def live_stack(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    logs = tmp_path_factory.mktemp("cli-logs")
    with live_simulator() as simulator:
        service = ServiceProcess(postgres_url, simulator.url, Path(logs), name="cli-service")
        service.start()
        env = service_environment(postgres_url, simulator.url, f"{service.url}/webhooks/vipps")
        try:
            with (
                httpx.Client(base_url=simulator.url, timeout=30) as sim,
                httpx.Client(
                    base_url=service.url,
                    headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                    timeout=30,
                ) as api,
            ):
                yield LiveStack(simulator, service, env, sim, api)
        finally:
            service.stop()


@pytest.fixture
async def stack(live_stack: LiveStack, postgres_url: str) -> AsyncIterator[LiveStack]:
    try:
        yield live_stack
    finally:
        live_stack.sim.post("/_sim/reset", json={})
        await truncate_all(postgres_url)
