"""A minimal HTTP/1.1 keep-alive client for the load generator.

httpx costs a few hundred microseconds of CPU per request; at thousands of requests per second
that would make the load generator the bottleneck on a 2-core machine. This client writes a
pre-formatted request and reads ``Content-Length`` (or chunked) answers, nothing more.

Invariant: a connection that saw any error is closed and never returned to the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)


# uvicorn closes keep-alive connections idle for 5 s; ours are dropped a little earlier.
IDLE_SECONDS = 4.0


class HttpError(Exception):
    pass


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.last_used = time.monotonic()

    async def exchange(self, request: bytes) -> Answer:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length: int | None = None
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if status in (204, 304) or 100 <= status < 200:
            body = b""
        elif chunked:
            body = await self._read_chunked()
        elif length is not None:
            body = await self.reader.readexactly(length) if length else b""
        else:
            raise HttpError("answer without Content-Length")
        return Answer(status, body)

    async def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class HttpPool:
    """Keep-alive connections to one origin; opens more when all are busy (no upper bound)."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.authority = f"{self.host}:{self.port}".encode()
        self._idle: list[_Connection] = []

    def build(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> bytes:
        """The request bytes; build once, send many times if the request repeats."""
        lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + self.authority]
        for name, value in (headers or {}).items():
            if name.lower() != "host":
                lines.append(f"{name}: {value}".encode())
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Length: %d" % len(body))
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    async def send(self, request: bytes) -> Answer:
        connection = self._take_idle()
        if connection is not None:
            try:
                return await self._exchange(connection, request)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                # The server closed an idle keep-alive connection as we reused it: nothing was
                # answered, so the request is sent again on a new connection.
                if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                    raise
        return await self._exchange(await self._open(), request)

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.last_used < IDLE_SECONDS:
                return connection
            connection.close()
        return None

    async def _exchange(self, connection: _Connection, request: bytes) -> Answer:
        try:
            answer = await connection.exchange(request)
        except BaseException:
            connection.close()
            raise
        connection.last_used = time.monotonic()
        self._idle.append(connection)
        return answer

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> Answer:
        return await self.send(self.build(method, path, body, headers))

    async def json(
        self, method: str, path: str, payload: object = None, headers: dict[str, str] | None = None
    ) -> Answer:
        body = b"" if payload is None else orjson.dumps(payload)
        merged = {"Content-Type": "application/json", **(headers or {})}
        return await self.request(method, path, body, merged)

    async def _open(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        return _Connection(reader, writer)

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
