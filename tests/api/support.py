"""Helpers for in-process API tests: hand-signed webhooks, row counts, an SSE reader, the ledger.

Everything here talks to a :class:`tests.support.stack.Stack`; nothing reaches past the service's
public surface except :func:`count_rows` and :func:`fetch`, which read the database to prove that
something was (or was not) written.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from fastapi import FastAPI
from sqlalchemy import text

from app.vipps.signature import format_ms_date, sign_webhook
from tests.support.stack import SERVICE_URL, Stack, in_process_stack

MSN = "123456"
WEBHOOK_HOST = httpx.URL(SERVICE_URL).netloc.decode()

# The exact receipt of the Vipps page for this flow ("in-store using merchant callback QR",
# Step 4). Unit price × quantity (8000) differs from the line total (10000) without a discount,
# and 25.5 % of 8000 is not 2000: suspicious, not wrong — a till must not be blocked by it.
VIPPS_EXAMPLE_RECEIPT: dict[str, Any] = {
    "orderLines": [
        {
            "name": "socks",
            "id": "line_item_1",
            "totalAmount": 10000,
            "totalAmountExcludingTax": 8000,
            "totalTaxAmount": 2000,
            "taxRate": 2550,
            "unitInfo": {"unitPrice": 4000, "quantity": "2", "quantityUnit": "PCS"},
        }
    ],
    "bottomLine": {"currency": "NOK", "posId": "pos_122", "receiptNumber": "0527013501"},
}


@contextlib.asynccontextmanager
async def checked_stack(database_url: str, **options: Any) -> AsyncIterator[Stack]:
    """:func:`in_process_stack` that also proves, at the end, that every request the service
    sent to Vipps validated against the official specs (the simulator runs in strict mode)."""
    async with in_process_stack(database_url, **options) as stack:
        yield stack
        report = (await stack.sim.get("/_sim/violations")).json()
        assert report["strict"] is True
        assert report["violations"] == [], report["violations"]


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def registration_secret(stack: Stack, msn: str = MSN) -> str:
    """The secret Vipps (the simulator) signs this MSN's deliveries with."""
    listing = (await stack.sim.get("/_sim/webhooks")).json()
    secrets = [r["secret"] for r in listing["registrations"] if r["msn"] == msn]
    assert len(secrets) == 1, listing
    secret: str = secrets[0]
    return secret


async def post_signed_webhook(
    stack: Stack,
    payload: dict[str, Any],
    *,
    msn: str = MSN,
    secret: str | None = None,
) -> httpx.Response:
    """Deliver ``payload`` the way Vipps does: HMAC over the registered URL's path and host."""
    return await post_signed_body(stack, orjson.dumps(payload), msn=msn, secret=secret)


async def post_signed_body(
    stack: Stack, body: bytes, *, msn: str = MSN, secret: str | None = None
) -> httpx.Response:
    """Deliver raw ``body`` bytes, correctly signed (bodies no JSON library would write)."""
    headers = sign_webhook(
        secret or await registration_secret(stack, msn),
        path_and_query=f"/webhooks/vipps/{msn}",
        host=WEBHOOK_HOST,
        body=body,
        ms_date=format_ms_date(datetime.now(UTC)),
    )
    headers["Content-Type"] = "application/json"
    return await stack.service.post(f"/webhooks/vipps/{msn}", content=body, headers=headers)


def sessions(stack: Stack) -> Any:
    return stack.app.state.services.ctx.sessions


async def count_rows(stack: Stack, table: str) -> int:
    async with sessions(stack)() as session:
        value = (await session.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
    return int(value)


TABLES = (
    "webhook_inbox",
    "checkins",
    "checkouts",
    "outbox",
    "checkout_changes",
    "audit_log",
)


async def row_counts(stack: Stack) -> dict[str, int]:
    return {table: await count_rows(stack, table) for table in TABLES}


async def fetch(stack: Stack, sql: str, **params: Any) -> list[dict[str, Any]]:
    async with sessions(stack)() as session:
        result = await session.execute(text(sql), params)
        return [dict(row._mapping) for row in result]


async def ledger(stack: Stack, **params: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = (await stack.sim.get("/_sim/ledger", params=params)).json()
    return entries


async def effective_calls(stack: Stack, reference: str) -> dict[str, int]:
    """How many calls took effect at Vipps per operation, for one payment reference."""
    counts: dict[str, int] = {}
    for entry in await ledger(stack, reference=reference):
        if entry["effect"] and not entry["replay"]:
            counts[entry["operation"]] = counts.get(entry["operation"], 0) + 1
    return counts


async def drain(stack: Stack) -> None:
    assert await stack.simulator.webhooks.drain(5.0)


async def wait_inbox(
    stack: Stack, predicate: Any, *, timeout: float = 5.0, status: str | None = None
) -> list[dict[str, Any]]:
    """Poll the operators' inbox listing until ``predicate(rows)`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    params = {"status": status} if status else {}
    while True:
        response = await stack.service.get("/api/v1/inbox", params=params, headers=stack.admin)
        assert response.status_code == 200, response.text
        rows: list[dict[str, Any]] = response.json()
        if predicate(rows):
            return rows
        if loop.time() > deadline:
            raise AssertionError(f"inbox never matched: {rows}")
        await asyncio.sleep(0.05)


async def payment_sent(stack: Stack, till: dict[str, Any], checkout_id: str) -> dict[str, Any]:
    """The checkout once Vipps has accepted its payment request (the push is on the phone)."""
    return await stack.wait_for(till, checkout_id, lambda c: c["paymentSent"])


async def sale(
    stack: Stack, amount: int = 10000, **body: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A till with a checkout whose payment request is on the customer's phone."""
    till = await stack.register_till()
    checkout = await stack.checkout(till, amount, **body)
    await stack.scan(till)
    return till, await payment_sent(stack, till, checkout["id"])


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


# ---- Server-Sent Events straight from the ASGI app --------------------------------------------
# httpx's ASGITransport buffers whole responses, so a never-ending stream is read here by calling
# the app directly and feeding each body chunk to a parser as it is sent.


@dataclass
class SseEvent:
    id: int | None
    event: str | None
    data: dict[str, Any]


@dataclass
class SseStream:
    events: asyncio.Queue[SseEvent] = field(default_factory=asyncio.Queue)
    status: int | None = None
    # Set when the server ended the response (the stream closed from its side).
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    comments: list[str] = field(default_factory=list)  # e.g. "keep-alive"
    _buffer: str = ""

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk.decode()
        while "\n\n" in self._buffer:
            block, self._buffer = self._buffer.split("\n\n", 1)
            fields: dict[str, str] = {}
            for line in block.split("\n"):
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                if not line or line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
            if "data" in fields:
                self.events.put_nowait(
                    SseEvent(
                        int(fields["id"]) if "id" in fields else None,
                        fields.get("event"),
                        orjson.loads(fields["data"]),
                    )
                )

    async def next(self, timeout: float = 5.0) -> SseEvent:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def until(self, predicate: Any, timeout: float = 10.0) -> list[SseEvent]:
        """Events up to and including the first one matching ``predicate``."""
        seen: list[SseEvent] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = await self.next(max(0.01, deadline - loop.time()))
            seen.append(event)
            if predicate(event):
                return seen


@contextlib.asynccontextmanager
async def sse(
    app: FastAPI, path: str, headers: dict[str, str] | None = None
) -> AsyncIterator[SseStream]:
    stream = SseStream()
    disconnect = asyncio.Event()
    request_sent = False
    started = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            stream.status = message["status"]
            started.set()
        elif message["type"] == "http.response.body":
            stream.feed(message.get("body", b""))
            if not message.get("more_body", False):
                stream.ended.set()

    raw_headers = [(b"host", WEBHOOK_HOST.encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 50000),
        "server": ("pos.test", 80),
        "state": {},
    }
    task = asyncio.create_task(app(scope, receive, send))
    try:
        await asyncio.wait_for(started.wait(), 5)
        yield stream
    finally:
        disconnect.set()
        try:
            await asyncio.wait_for(task, 5)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
