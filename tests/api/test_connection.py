"""Over a real socket: a refused request leaves the till's keep-alive connection usable, and an
unexpected error says ``Connection: close`` (with a request id) before the server drops it."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from app.devstack import BackgroundServer
from app.main import create_app
from app.simulator import SimulatorConfig, create_simulator_app
from tests.support.stack import ADMIN_KEY, service_settings


@contextmanager
def served(database_url: str) -> Iterator[tuple[BackgroundServer, FastAPI]]:
    sim = create_simulator_app(SimulatorConfig(strict=True))
    app = create_app(service_settings(database_url), vipps_transport=httpx.ASGITransport(app=sim))

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/test-only/boom", boom, methods=["GET"])
    server = BackgroundServer(app).start()
    try:
        yield server, app
    finally:
        server.stop()


def _request(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: pos.test", f"Content-Length: {len(body)}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection mid-body"
        rest += chunk
    return int(status_line.split()[1]), headers, rest[:length]


def _json_body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()  # ASCII escapes: "\u0000", "\ud800" as a till sends them


def test_a_refused_nul_keeps_the_connection_usable(sqlite_url: str) -> None:
    with (
        served(sqlite_url) as (server, _),
        socket.create_connection((server.host, server.port), timeout=10) as sock,
    ):
        auth = {"Authorization": f"Bearer {ADMIN_KEY}", "Content_Type": "application/json"}
        for name in ("a\u0000bc", "\ud800"):
            sock.sendall(_request("PUT", "/api/v1/stores/s-1", _json_body({"name": name}), **auth))
            status, headers, body = _read_response(sock)
            assert status == 422
            assert headers["content-type"] == "application/problem+json"
            assert headers.get("connection", "keep-alive") != "close"
            problem = json.loads(body)
            assert problem["errors"] == [
                {
                    "field": "name",
                    "code": "invalid_text",
                    "message": "must not contain NUL characters or unpaired UTF-16 surrogates",
                }
            ]
            assert headers["x-request-id"]
        # The same connection carries the next request.
        sock.sendall(_request("PUT", "/api/v1/stores/s-1", _json_body({"name": "Oslo"}), **auth))
        status, _, body = _read_response(sock)
        assert status == 200, body
        assert json.loads(body)["name"] == "Oslo"


def test_an_unexpected_error_is_a_problem_that_closes_the_connection(sqlite_url: str) -> None:
    with (
        served(sqlite_url) as (server, _),
        socket.create_connection((server.host, server.port), timeout=10) as sock,
    ):
        sock.sendall(_request("GET", "/test-only/boom", x_request_id="req-boom-1"))
        status, headers, body = _read_response(sock)
        assert status == 500
        assert headers["content-type"] == "application/problem+json"
        assert headers["connection"] == "close"
        assert headers["x-request-id"] == "req-boom-1"
        problem = json.loads(body)
        assert problem["code"] == "internal_error"
        assert problem["requestId"] == "req-boom-1"
        assert "a bug" not in body.decode()  # no internals in the answer
        assert sock.recv(1) == b""  # and then the server hangs up, as announced
