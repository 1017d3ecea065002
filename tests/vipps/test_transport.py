"""The aiohttp-backed transport under the Vipps client: requests arrive as httpx built them, and
every failure keeps the meaning the client's retry rules depend on — "never sent" only when no
connection was made, "outcome unknown" whenever the request may have reached Vipps."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from app.vipps.transport import AiohttpTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[str]:
    listening = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        listening.close()
        await listening.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> tuple[list[bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")[:-2]
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return lines, await reader.readexactly(length)


def client(transport: AiohttpTransport, **timeouts: float) -> httpx.AsyncClient:
    timeout = httpx.Timeout(**({"timeout": 5.0} | timeouts))
    return httpx.AsyncClient(transport=transport, timeout=timeout)


async def test_a_request_arrives_as_httpx_built_it_and_the_answer_is_decoded() -> None:
    seen: list[tuple[list[bytes], bytes]] = []
    answer = gzip.compress(b'{"state":"CREATED"}')

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):  # two requests on one kept-alive connection
            seen.append(await _read_request(reader))
            writer.write(
                b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                b"Content-Encoding: gzip\r\nX-Request-Id: r-1\r\nContent-Length: "
                + str(len(answer)).encode()
                + b"\r\n\r\n"
                + answer
            )
            await writer.drain()
        writer.close()

    transport = AiohttpTransport()
    try:
        async with server(handle) as url, client(transport) as http:
            for _ in range(2):
                response = await http.post(
                    f"{url}/epayment/v1/payments?x=1",
                    json={"reference": "till-1-abc"},
                    headers={"Idempotency-Key": "till-1-abc-create"},
                )
                assert response.status_code == 201
                assert response.json() == {"state": "CREATED"}
                assert response.headers["x-request-id"] == "r-1"
    finally:
        await transport.aclose()
    assert len(seen) == 2
    lines, body = seen[0]
    assert lines[0] == b"POST /epayment/v1/payments?x=1 HTTP/1.1"
    names = [line.partition(b":")[0].lower() for line in lines[1:]]
    assert names.count(b"host") == 1
    assert names.count(b"content-length") == 1
    assert b"idempotency-key: till-1-abc-create" in [line.lower() for line in lines]
    assert body == b'{"reference":"till-1-abc"}'


async def test_a_refused_connection_is_never_sent() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with server(handle) as url:
        pass  # closed again: nothing listens on its port any more
    transport = AiohttpTransport()
    try:
        async with client(transport) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(url)
    finally:
        await transport.aclose()


async def test_a_connection_dropped_after_the_request_leaves_the_outcome_unknown() -> None:
    received = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        received.set()
        writer.transport.abort()  # Vipps took it, and the answer never came back

    transport = AiohttpTransport()
    try:
        async with server(handle) as url, client(transport) as http:
            with pytest.raises(httpx.ReadError):
                await http.post(f"{url}/capture", json={"amount": 100})
    finally:
        await transport.aclose()
    assert received.is_set()


async def test_an_answer_that_never_comes_is_a_read_timeout() -> None:
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await done.wait()  # no answer while the client waits
        writer.close()

    transport = AiohttpTransport()
    try:
        async with server(handle) as url, client(transport, timeout=5.0, read=0.3) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.post(f"{url}/refund", json={"amount": 100})
            done.set()
    finally:
        await transport.aclose()


async def test_waiting_too_long_for_a_pooled_connection_is_never_sent() -> None:
    release = asyncio.Event()
    arrivals = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal arrivals
        await _read_request(reader)
        arrivals += 1
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    transport = AiohttpTransport(httpx.Limits(max_connections=1, max_keepalive_connections=1))
    try:
        # aiohttp has one deadline for waiting for the pool and connecting: connect + pool.
        limits = {"timeout": 5.0, "connect": 0.1, "pool": 0.1}
        async with server(handle) as url, client(transport, **limits) as http:
            first = asyncio.create_task(http.get(f"{url}/one"))
            await asyncio.sleep(0.1)
            with pytest.raises(httpx.ConnectTimeout):
                await http.get(f"{url}/two")
            release.set()
            assert (await first).status_code == 200
    finally:
        await transport.aclose()
    assert arrivals == 1, "the request that timed out in the pool must never have been sent"
