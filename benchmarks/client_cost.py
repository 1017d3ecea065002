"""What one outgoing HTTP call costs the service's CPU, by client.

``python -m benchmarks.client_cost [-n N]``

Starts a minimal HTTP/1.1 server in a child process (it answers every request with the same
small JSON body, keep-alive) and measures ``time.process_time()`` per POST in this process — the
client's own CPU — for:

* httpx with its default pool;
* httpx as the service builds it (``app.service.bootstrap.vipps_http_client``: explicit timeouts,
  keep-alive pool, no redirects);
* aiohttp, if it is installed (it is not a dependency: the figure is for comparison).

The figures decide whether the Vipps client should move off httpx (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import sys
import time
from collections.abc import Awaitable, Callable

import httpx

BODY = b'{"reference":"till-1-abc","state":"CREATED","pspReference":"x"}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


class _Answer(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            assert isinstance(self.transport, asyncio.Transport)
            self.transport.write(RESPONSE)


def _serve(sock: socket.socket) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Answer, sock=sock)
        await server.serve_forever()

    asyncio.run(main())


async def _cpu_per_call(label: str, n: int, call: Callable[[], Awaitable[object]]) -> None:
    for _ in range(min(200, n)):
        await call()
    started = time.process_time()
    for _ in range(n):
        await call()
    per_call = (time.process_time() - started) / n * 1e6
    sys.stdout.write(f"{label:<52} {per_call:8.1f} µs CPU per call\n")


async def measure(url: str, n: int) -> None:
    payload = {"amount": {"currency": "NOK", "value": 12900}, "reference": "till-1-abc"}
    headers = {"Idempotency-Key": "till-1-abc-capture-v4", "Authorization": "Bearer x" * 40}
    async with httpx.AsyncClient() as client:
        await _cpu_per_call(
            "httpx, default client", n, lambda: client.post(url, json=payload, headers=headers)
        )
    from app.service.bootstrap import vipps_http_client
    from app.settings import Settings

    async with vipps_http_client(Settings()) as client:
        await _cpu_per_call(
            "httpx, the service's client (tuned pool, timeouts)",
            n,
            lambda: client.post(url, json=payload, headers=headers),
        )
    try:
        import aiohttp
    except ImportError:
        sys.stdout.write("aiohttp: not installed (pip install aiohttp to compare)\n")
        return

    async with aiohttp.ClientSession() as session:

        async def post() -> None:
            async with session.post(url, json=payload, headers=headers) as response:
                await response.read()

        await _cpu_per_call("aiohttp, one ClientSession", n, post)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=3000)
    args = parser.parse_args()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = multiprocessing.get_context("fork").Process(target=_serve, args=(sock,), daemon=True)
    server.start()
    try:
        import uvloop

        uvloop.run(measure(f"http://127.0.0.1:{port}/epayment/v1/payments", args.n))
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
