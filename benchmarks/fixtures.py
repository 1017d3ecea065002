"""Bench data set-up: tills bulk-inserted into the database, their QRs at the simulator,
signed webhook events, checkouts waiting for a scan.

Tills are written with ``COPY`` (100,000 in about a second) with API keys whose hashes are
computed here, exactly as :func:`app.crypto.new_api_key` would store them; their QR codes are
created at the simulator through its QR API only where a benchmark scans them.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from app.crypto import hash_api_key
from app.vipps.signature import format_ms_date, sign_webhook
from benchmarks.http import HttpPool

STORE_ID = "bench-store"
SERVICE_MSN = "123456"
BARE_MSN = "654321"
TILL_COLUMNS = (
    "id", "store_id", "msn", "merchant_qr_id", "location_description", "api_key_id",
    "api_key_hash", "status", "qr_status", "qr_content", "created_at", "updated_at", "version",
)  # fmt: skip


@dataclass(frozen=True)
class BenchTill:
    id: str
    qr_id: str
    api_key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def _till_row(till_id: str, qr_id: str, now: datetime) -> tuple[tuple[Any, ...], str]:
    key_id = secrets.token_hex(8)
    api_key = f"vpk_{key_id}_{secrets.token_urlsafe(24)}"
    row = (
        till_id, STORE_ID, SERVICE_MSN, qr_id, till_id[:36], key_id, hash_api_key(api_key),
        "ACTIVE", "SYNCED", None, now, now, 0,
    )  # fmt: skip
    return row, api_key


async def insert_tills(dsn: str, prefix: str, count: int) -> list[BenchTill]:
    """``count`` active tills named ``<prefix>-<n>`` (store created if missing)."""
    now = datetime.now(UTC)
    rows: list[tuple[Any, ...]] = []
    tills: list[BenchTill] = []
    for n in range(count):
        till_id = f"{prefix}-{n}"
        qr_id = str(uuid.uuid4())
        row, api_key = _till_row(till_id, qr_id, now)
        rows.append(row)
        tills.append(BenchTill(till_id, qr_id, api_key))
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "INSERT INTO stores (id, name, club_policy, member_price_hold,"
            " member_price_hold_seconds, created_at, updated_at)"
            " VALUES ($1, $1, 'off', false, 20, now(), now()) ON CONFLICT DO NOTHING",
            STORE_ID,
        )
        await connection.copy_records_to_table("tills", records=rows, columns=TILL_COLUMNS)
    finally:
        await connection.close()
    return tills


async def delete_tills(dsn: str, prefix: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("DELETE FROM tills WHERE id LIKE $1", f"{prefix}-%")
    finally:
        await connection.close()


class SimulatorApi:
    """The simulator as Vipps (access token, QR, ePayment) and as the customer (/_sim).

    It uses the simulator's partner keys, which cover both its sales units (each sales unit's own
    keys would cover only that one); the MSN goes in every call, as partner keys require.
    """

    def __init__(self, pool: HttpPool) -> None:
        self.pool = pool
        self.token = ""

    async def login(self) -> None:
        answer = await self.pool.request(
            "POST",
            "/accesstoken/get",
            headers={
                "client_id": "sim-partner-client-id",
                "client_secret": "sim-partner-client-secret",
                "Ocp-Apim-Subscription-Key": "sim-partner-subscription-key",
            },
        )
        self.token = answer.json()["access_token"]  # type: ignore[index]

    def headers(self, msn: str, idempotency_key: str | None = None) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Ocp-Apim-Subscription-Key": "sim-partner-subscription-key",
            "Merchant-Serial-Number": msn,
        }
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    async def put_qrs(self, qr_ids: Sequence[str], msn: str, concurrency: int = 16) -> None:
        queue = list(qr_ids)

        async def worker() -> None:
            while queue:
                qr_id = queue.pop()
                answer = await self.pool.json(
                    "PUT",
                    f"/qr/v1/merchant-callback/{qr_id}",
                    {"locationDescription": "Bench till", "category": "IN_STORE"},
                    self.headers(msn),
                )
                if answer.status >= 300:
                    raise RuntimeError(f"QR PUT {answer.status}: {answer.body[:200]!r}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def scan(self, qr_id: str, msn: str) -> dict[str, Any]:
        answer = await self.pool.json("POST", f"/_sim/qr/{qr_id}/scan", {"msn": msn})
        if answer.status != 200:
            raise ValueError(f"scan {answer.status}")
        result: dict[str, Any] = answer.json()  # type: ignore[assignment]
        return result

    async def approve(self, reference: str, msn: str) -> None:
        answer = await self.pool.json("POST", f"/_sim/payments/{reference}/approve", {"msn": msn})
        if answer.status != 200:
            raise ValueError(f"approve {answer.status}")

    async def create_payment(self, reference: str, token: str, msn: str) -> None:
        payment = {
            "amount": {"currency": "DKK", "value": 1000},
            "paymentMethod": {"type": "WALLET"},
            "customer": {"customerToken": token},
            "customerInteraction": "CUSTOMER_PRESENT",
            "userFlow": "PUSH_MESSAGE",
            "reference": reference,
            "paymentDescription": "Bare flow",
        }
        answer = await self.pool.json(
            "POST", "/epayment/v1/payments", payment, self.headers(msn, f"{reference}-create")
        )
        if answer.status >= 300:
            raise ValueError(f"createPayment {answer.status}")

    async def capture(self, reference: str, msn: str) -> None:
        answer = await self.pool.json(
            "POST",
            f"/epayment/v1/payments/{reference}/capture",
            {"modificationAmount": {"currency": "DKK", "value": 1000}},
            self.headers(msn, f"{reference}-capture"),
        )
        if answer.status >= 300:
            raise ValueError(f"capture {answer.status}")

    async def control(self, method: str, path: str, payload: object = None) -> Any:
        answer = await self.pool.json(method, path, payload)
        if answer.status >= 300:
            raise RuntimeError(f"{method} {path}: {answer.status} {answer.body[:200]!r}")
        return answer.json() if answer.body else None


def iso_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def checked_in_body(qr_id: str) -> bytes:
    return orjson.dumps(
        {
            "customerToken": base64.b64encode(secrets.token_bytes(33)).decode(),
            "merchantQrId": qr_id,
            "msn": SERVICE_MSN,
            "initiatedAt": iso_now(),
        }
    )


def payment_event_body(reference: str) -> bytes:
    return orjson.dumps(
        {
            "msn": SERVICE_MSN,
            "reference": reference,
            "pspReference": secrets.token_hex(8),
            "name": "AUTHORIZED",
            "amount": {"currency": "NOK", "value": 1000},
            "timestamp": iso_now(),
            "idempotencyKey": secrets.token_hex(8),
            "success": True,
        }
    )


@dataclass(frozen=True)
class Signer:
    """Signs events as Vipps does for the service's registered webhook URL."""

    secret: str
    path_and_query: str
    host: str

    def headers(self, body: bytes) -> dict[str, str]:
        headers = sign_webhook(
            self.secret,
            path_and_query=self.path_and_query,
            host=self.host,
            body=body,
            ms_date=format_ms_date(datetime.now(UTC)),
        )
        headers.pop("Host", None)
        headers["Content-Type"] = "application/json"
        return headers


def ingest_events(tag: str, count: int, qr_ids: Sequence[str] = (), every: int = 0) -> list[bytes]:
    """Unique events: check-ins and payment events alternately, none of them known to the
    service (processing ends "unmatched"); with ``qr_ids``, every ``every``-th is a check-in for
    one of those tills instead (a sale waits there: it leads to a Vipps call)."""
    bodies: list[bytes] = []
    real = iter(qr_ids)
    for n in range(count):
        if every and n % every == 0:
            qr_id = next(real, None)
            if qr_id is not None:
                bodies.append(checked_in_body(qr_id))
                continue
        if n % 2:
            bodies.append(payment_event_body(f"bench-{tag}-{n}"))
        else:
            bodies.append(checked_in_body(f"unknown-{tag}-{n}"))
    return bodies


def signed_requests(pool: HttpPool, path: str, signer: Signer, bodies: list[bytes]) -> list[bytes]:
    return [pool.build("POST", path, body, signer.headers(body)) for body in bodies]
