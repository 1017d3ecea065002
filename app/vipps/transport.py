"""An httpx transport over aiohttp's connection pool: httpx's API, a third of its CPU per call.

The Vipps client is written against ``httpx.AsyncClient`` (typed requests, respx in its unit
tests). Underneath, httpx's own connection layer costs about 550 µs of CPU per call on the
benchmark machine against about 200 µs for httpx over this transport
(``python -m benchmarks.client_cost``; benchmarks/README.md) — two Vipps calls per sale.

What the rest of the client relies on is the *kind* of failure, so it is mapped with care:

* :class:`httpx.ConnectError` / :class:`httpx.ConnectTimeout` only when the request provably
  never left (no connection could be made, or none was free in the pool in time): retrying
  cannot act twice;
* :class:`httpx.ReadTimeout` / :class:`httpx.ReadError` when it may have reached Vipps (a read
  timed out, the connection dropped after sending): the outcome is unknown, and the outbox asks
  Vipps before it sends again (``app.workers.outbox``).

Responses are read whole (Vipps answers with small JSON documents) and left encoded, so httpx
decodes them as it would its own. One difference in timeouts: aiohttp has a single deadline for
waiting for a free pooled connection and for connecting, so httpx's ``pool`` and ``connect``
timeouts add up to it.
"""

from __future__ import annotations

import aiohttp
import httpx

# Set by the transport, never forwarded: aiohttp writes its own.
_HOP_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection"})


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, limits: httpx.Limits | None = None) -> None:
        self._limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self._session: aiohttp.ClientSession | None = None

    def _session_in_loop(self) -> aiohttp.ClientSession:
        """One session per transport, made in the running loop on first use."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limits.max_connections or 0,
                keepalive_timeout=self._limits.keepalive_expiry or 5.0,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # httpx decodes, as with its own transport
                skip_auto_headers=("User-Agent", "Accept-Encoding"),  # httpx sets them
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        connect = timeouts.get("connect")
        pool = timeouts.get("pool")
        timeout = aiohttp.ClientTimeout(
            total=None,
            # aiohttp's ``connect`` includes waiting for a free connection in the pool.
            connect=None if connect is None or pool is None else connect + pool,
            sock_connect=connect,
            sock_read=timeouts.get("read"),
        )
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower() not in _HOP_HEADERS
        ]
        body = await request.aread()
        session = self._session_in_loop()
        try:
            async with session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=timeout,
                compress=None,
            ) as answer:
                content = await answer.read()
                status = answer.status
                raw_headers = [(name, value) for name, value in answer.raw_headers]
        except aiohttp.ConnectionTimeoutError as exc:  # connecting, or waiting for the pool
            raise httpx.ConnectTimeout(str(exc) or "connect timeout", request=request) from exc
        except aiohttp.ClientConnectorError as exc:  # no connection could be made
            raise httpx.ConnectError(str(exc) or "connect failed", request=request) from exc
        except (aiohttp.SocketTimeoutError, TimeoutError) as exc:
            raise httpx.ReadTimeout(str(exc) or "read timeout", request=request) from exc
        except aiohttp.ClientResponseError as exc:  # a malformed answer: it was sent
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except (aiohttp.ClientError, OSError) as exc:  # dropped after sending: outcome unknown
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
        return httpx.Response(
            status,
            headers=raw_headers,
            content=content,
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
