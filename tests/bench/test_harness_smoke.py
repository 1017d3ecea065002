"""The benchmark harness at toy scale, so its plumbing cannot rot. No figure is asserted: the
machine is shared and noisy (numbers belong to ``make bench``)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fastapi import FastAPI, Request, Response

from app.devstack import BackgroundServer
from benchmarks import report
from benchmarks.http import HttpPool
from benchmarks.loads import closed_loop, open_loop, percentile
from benchmarks.scenarios import ratios, spread


def test_percentile_and_spread() -> None:
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile([1.0, 2.0], 99) == 2.0
    assert math.isnan(percentile([], 50))
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert ratios([2.0, 3.0, 8.0], [1.0, 3.0, 4.0]) == {"median": 2.0, "min": 1.0, "max": 2.0}


@pytest.fixture
async def echo() -> AsyncIterator[BackgroundServer]:
    app = FastAPI()

    @app.post("/echo")
    async def echo_route(request: Request) -> Response:
        return Response(await request.body(), media_type="application/json")

    @app.delete("/nothing")
    async def nothing() -> Response:
        return Response(status_code=204)

    server = BackgroundServer(app)
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def test_load_shapes_and_report(echo: BackgroundServer, tmp_path: Path) -> None:
    pool = HttpPool(echo.url)
    requests = [pool.build("POST", "/echo", b'{"n": %d}' % n) for n in range(200)]
    closed = await closed_loop("echo", pool, requests, concurrency=4, seconds=0.3, pids=[])
    opened = await open_loop("echo", pool, requests, rate=100, seconds=0.3, pids=[])
    assert closed.ok > 0
    assert closed.errors == 0
    assert opened.ok == 30
    assert opened.errors == 0
    assert (await pool.request("DELETE", "/nothing")).status == 204
    assert (await pool.json("POST", "/echo", {"a": 1})).json() == {"a": 1}
    pool.close()

    runs = {"echo": [closed.summary()], "bare": [opened.summary()]}
    data = {
        "meta": {
            "date": "2024-01-01T00:00:00Z",
            "commit": "abc1234",
            "machine": {"cpus": 2, "cpusAvailable": 2, "cpuModel": "test", "memoryGb": 1,
                        "kernel": "x", "loadAverageAtStart": [0.0, 0.0, 0.0]},
            "versions": {"python": "3.11"},
            "fsync": {"available": False},
            "pinning": "off",
            "scale": {"reps": 1, "ingest_concurrency": 4},
            "wallSeconds": 1.0,
        },
        "results": {
            "ingest": {
                "closed": runs, "open": runs, "halfBareRate": 50.0,
                "sqlalchemyThroughputRatio": spread([0.5]),
                "serviceBacklogDrainSeconds": spread([0.1]),
                "targets": [{"id": "1a", "target": "t", "measured": "1.00×", "ratio": None,
                             "met": True}],
            },
        },
    }  # fmt: skip
    paths = report.write(data, tmp_path)
    assert [p.name for p in paths] == [
        "2024-01-01-abc1234.json",
        "2024-01-01-abc1234.md",
        "2024-01-01-abc1234.png",
    ]
    assert "| 1a | t | 1.00× | **met** |" in paths[1].read_text()
    assert paths[2].read_bytes()[:4] == b"\x89PNG"


def test_generated_events_pass_the_services_signature_check() -> None:
    from datetime import UTC, datetime, timedelta

    import orjson

    from app.service.intake import CHECKED_IN, classify
    from app.vipps.signature import verify_webhook
    from benchmarks.fixtures import Signer, ingest_events

    signer = Signer("s3cret", "/webhooks/vipps/123456", "127.0.0.1:8000")
    bodies = ingest_events("t", 6, ["qr-a"], every=3)
    kinds = [classify(orjson.loads(body))[0] for body in bodies]
    assert kinds.count(CHECKED_IN) == 3
    assert len(set(bodies)) == 6
    assert orjson.loads(bodies[0])["merchantQrId"] == "qr-a"
    for body in bodies:
        verify_webhook(
            ["s3cret"],
            path_and_query="/webhooks/vipps/123456",
            host="127.0.0.1:8000",
            headers=signer.headers(body),
            body=body,
            now=datetime.now(UTC),
            max_age=timedelta(minutes=5),
        )
