"""The server reaps half-open connections (issue 18, item 9), over real sockets to ``serve``.

Twenty connections that sent half a header stayed open for ever: uvicorn has no timeout for
receiving a request. ``serve`` now closes a connection whose request has not fully arrived within
``VIPPS_POS_SERVER__REQUEST_READ_TIMEOUT_SECONDS`` (1 s here), and one whose headers grow past
``…__MAX_REQUEST_HEAD_BYTES`` — while a slow but complete request, and a long response such as an
event stream, are untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.devstack import BackgroundServer
from tests.support.live import ADMIN_KEY, ServiceProcess

pytestmark = pytest.mark.e2e

# How long the test waits for the server to act; the deadline under test is 1 s.
PATIENCE = 20.0


@pytest.fixture
def strict_service(
    pg_url: str, simulator: BackgroundServer, tmp_path: Path
) -> Iterator[ServiceProcess]:
    process = ServiceProcess(
        pg_url,
        simulator.url,
        tmp_path / "logs",
        name="strict",
        extra_env={
            "VIPPS_POS_SERVER__REQUEST_READ_TIMEOUT_SECONDS": "1",
            "VIPPS_POS_SERVER__KEEP_ALIVE_TIMEOUT_SECONDS": "1",
            "VIPPS_POS_SERVER__MAX_REQUEST_HEAD_BYTES": "4096",
        },
    ).start()
    try:
        yield process
    finally:
        process.stop()


def _connect(service: ServiceProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=PATIENCE)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    """Blocks until the server closes the connection (True) or PATIENCE passes (False)."""
    sock.settimeout(PATIENCE)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_half_sent_requests_are_reaped_and_complete_ones_are_served(
    strict_service: ServiceProcess,
) -> None:
    half_open = []
    for n in range(20):
        sock = _connect(strict_service)
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Probe: {n}".encode())
        half_open.append(sock)
    silent = _connect(strict_service)  # connected, never says a word
    body_missing = _connect(strict_service)
    body_missing.sendall(
        b"POST /webhooks/vipps/123456 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    oversized = _connect(strict_service)
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        oversized.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 8192)
    try:
        for sock in [*half_open, silent, body_missing, oversized]:
            assert _closed_by_server(sock)
    finally:
        for sock in [*half_open, silent, body_missing, oversized]:
            sock.close()

    # A slow but complete request within the deadline is answered.
    with _connect(strict_service) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        time.sleep(0.3)
        slow.sendall(b"Connection: close\r\n\r\n")
        slow.settimeout(PATIENCE)
        answer = b""
        while chunk := slow.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")


async def test_a_long_response_outlives_the_request_deadline(
    strict_service: ServiceProcess,
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=strict_service.url, timeout=PATIENCE) as client:
        created = await client.post(
            "/api/v1/tills",
            json={"tillId": "t-1", "storeId": "s-1", "locationDescription": "Kasse 1"},
            headers=admin,
        )
        assert created.status_code == 201, created.text
        till = {"Authorization": f"Bearer {created.json()['apiKey']}"}
        async with client.stream("GET", "/api/v1/tills/t-1/events", headers=till) as stream:
            lines = stream.aiter_lines()

            async def next_event() -> str:
                async for line in lines:
                    if line.startswith("event:"):
                        return line.removeprefix("event:").strip()
                raise AssertionError("the stream was closed")

            assert await next_event() == "snapshot"
            await asyncio.sleep(2.5)  # well past the 1 s request deadline
            sale = await client.post(
                "/api/v1/tills/t-1/checkouts", json={"amount": 100, "currency": "NOK"}, headers=till
            )
            assert sale.status_code == 201, sale.text
            assert await asyncio.wait_for(next_event(), PATIENCE) == "checkout.created"


def test_a_large_body_sent_with_its_headers_is_answered_not_cut(
    strict_service: ServiceProcess,
) -> None:
    """The head limit counts the headers only: a body far over it that arrives in the same read
    as the headers gets an HTTP answer (here a problem for the request), not a reset."""
    body = b'{"locationDescription": "' + b"x" * 20_000 + b'"}'
    head = (
        f"PATCH /api/v1/tills/no-such-till HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with contextlib.closing(_connect(strict_service)) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 4"), answer[:200]
