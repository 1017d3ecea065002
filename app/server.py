"""The HTTP server behind ``vipps-pos serve``: uvicorn with deadlines it does not have itself.

uvicorn closes an *idle* keep-alive connection after ``timeout_keep_alive``, but it has no timeout
for receiving a request: its keep-alive timer is only armed after a response, and every byte
received disarms it. A client that opens a connection and sends half a header (or one byte a
minute) holds the connection, and its memory, for ever (issue 18, item 9). So the protocol class
used here adds, per connection:

* a **request deadline**: the request line, headers and body must arrive completely within
  ``request_read_timeout_seconds`` of the connection opening or of the previous response's end;
  otherwise the connection is closed. Responses are never cut: the deadline only concerns what
  the client still has to send (an SSE stream or a long-poll runs as long as it runs);
* a **request-head limit**: more than ``max_request_head_bytes`` received before a request's
  headers are complete closes the connection (h11 enforces the same through
  ``h11_max_incomplete_event_size``; httptools, uvicorn's default parser, has no such setting).

What the proxy in front should set is in docs/operations.md.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
import uvicorn

from app.settings import ServerSettings

log = structlog.get_logger("app.server")

try:  # uvicorn's own choice ("auto"): httptools when installed, else h11
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _BaseProtocol
except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools
    from uvicorn.protocols.http.h11_impl import H11Protocol as _BaseProtocol  # type: ignore[assignment]


def guarded_protocol(settings: ServerSettings) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with the request deadline and head limit of ``settings``."""
    deadline_seconds = settings.request_read_timeout_seconds
    max_head = settings.max_request_head_bytes

    class GuardedHttpProtocol(_BaseProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _head_bytes = 0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._awaiting_head():
                # Only what precedes the end of the headers is head: a body that arrives in the
                # same read (a large request sent at once) is the parser's to judge (413).
                end = data.find(b"\r\n\r\n")
                self._head_bytes += len(data) if end < 0 else end + 4
                if self._head_bytes > max_head:
                    log.warning("server.request_head_too_large", client=_client(self))
                    self.transport.close()
                    return
            super().data_received(data)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request on this connection gets its own deadline

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            super().connection_lost(exc)

        def _awaiting_head(self) -> bool:
            cycle = self.cycle
            return cycle is None or bool(cycle.response_complete)

        def _awaiting_request(self) -> bool:
            cycle = self.cycle
            return cycle is None or bool(cycle.response_complete) or bool(cycle.more_body)

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._head_bytes = 0
            self._deadline = self.loop.call_later(deadline_seconds, self._on_deadline)

        def _on_deadline(self) -> None:
            self._deadline = None
            if self._awaiting_request() and not self.transport.is_closing():
                log.info("server.request_timeout", client=_client(self))
                self.transport.close()

    return GuardedHttpProtocol


def _client(protocol: Any) -> str | None:
    client = getattr(protocol, "client", None)
    return f"{client[0]}:{client[1]}" if client else None


def __getattr__(name: str) -> Any:
    """``EnvironmentProtocol``: :func:`guarded_protocol` with the settings of this process's
    environment — what each process of ``serve --workers N`` imports by name (a class made in
    the parent could not be handed to a spawned process)."""
    if name == "EnvironmentProtocol":
        from app.settings import Settings

        return guarded_protocol(Settings().server)
    raise AttributeError(name)


def uvicorn_config(
    app: Any, settings: ServerSettings, *, host: str, port: int, workers: int = 1
) -> uvicorn.Config:
    """The server configuration ``vipps-pos serve`` runs with. With several ``workers``,
    ``app`` is the import path of an app factory, built in each process."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        factory=workers > 1,
        workers=workers,
        http=guarded_protocol(settings) if workers == 1 else "app.server:EnvironmentProtocol",
        log_config=None,
        proxy_headers=True,
        timeout_keep_alive=settings.keep_alive_timeout_seconds,
        h11_max_incomplete_event_size=settings.max_request_head_bytes,
        timeout_graceful_shutdown=10,
    )
