"""``vipps-pos serve --workers 2``: two processes of one service on one database, as replicas.

Webhooks and till requests land on either process (the kernel spreads the connections), each
runs its own outbox, inbox and reconciler, and every sale still makes exactly one create and one
capture at Vipps.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.devstack import BackgroundServer
from tests.e2e.helpers import LiveTill, effective_calls
from tests.support.live import ADMIN_KEY, ServiceProcess

pytestmark = pytest.mark.e2e

ONE_SALE = {"createPayment": 1, "userApprove": 1, "capturePayment": 1}


@pytest.fixture
def two_workers(
    pg_url: str, simulator: BackgroundServer, tmp_path: Path
) -> Iterator[ServiceProcess]:
    process = ServiceProcess(
        pg_url, simulator.url, tmp_path / "logs", name="two-workers", workers=2
    ).start()
    try:
        yield process
    finally:
        process.stop()


async def test_two_worker_processes_sell_without_charging_twice(
    two_workers: ServiceProcess, sim: httpx.AsyncClient
) -> None:
    async with httpx.AsyncClient(
        base_url=two_workers.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    ) as admin:
        assert (await admin.post("/api/v1/webhooks/123456/ensure")).status_code == 200
        tills = [await LiveTill.register(admin, sim, f"w{i}", two_workers.url) for i in range(6)]

    async def sale(till: LiveTill, amount: int) -> dict[str, Any]:
        checkout = await till.checkout(amount)
        await till.scan()
        sent = await till.wait_for(checkout["id"], lambda c: c["paymentSent"])
        await till.approve(sent["reference"])
        return await till.wait_state(checkout["id"], "CAPTURED")

    try:
        sold = await asyncio.gather(*(sale(t, 1000 + i) for i, t in enumerate(tills)))
    finally:
        for till in tills:
            await till.aclose()
    for i, done in enumerate(sold):
        assert done["capturedAmount"] == 1000 + i
        assert await effective_calls(sim, done["reference"]) == ONE_SALE
    started = set(re.findall(r"Started server process \[(\d+)\]", two_workers.log_path.read_text()))
    assert len(started) == 2, f"expected two worker processes, saw {started}"
