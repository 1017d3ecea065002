"""Bare baselines: the least a FastAPI app can do for the same request.

``python -m benchmarks.baselines KIND --port P --dsn postgresql://... [--sim-url URL]``

* ``asyncpg``: ``POST /ingest/{msn}`` inserts the raw body with one asyncpg ``INSERT`` (autocommit,
  a durable commit like the real intake) and answers ``{"status": "accepted"}``.
* ``sqlalchemy``: the same insert through an ``AsyncSession`` on an ORM table (where the ORM's
  own cost shows).
* ``forwarder``: ``POST /hook`` takes a ``user.checked-in.v1`` and at once sends the matching
  create-payment to the simulator (no signature check, no storage) — the floor for benchmark 2.

All run under the same uvicorn settings as the service (uvloop, httptools), one process.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import asyncpg
import httpx
import orjson
import uvicorn
from fastapi import FastAPI, Request, Response
from sqlalchemy import BigInteger, String, Text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.db import UTCDateTime

BARE_TABLE = """
CREATE TABLE IF NOT EXISTS bare_inbox (
    id BIGSERIAL PRIMARY KEY,
    msn VARCHAR(6) NOT NULL,
    body TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL
)
"""
ACCEPTED = orjson.dumps({"status": "accepted"})
FORWARD_MSN = "654321"  # the simulator's DKK sales unit; the service under test uses 123456


class _Base(DeclarativeBase):
    pass


class BareInbox(_Base):
    __tablename__ = "bare_inbox"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    msn: Mapped[str] = mapped_column(String(6))
    body: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())


def asyncpg_app(dsn: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await asyncpg.create_pool(dsn, min_size=2, max_size=10)
        await app.state.pool.execute(BARE_TABLE)
        yield
        await app.state.pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/readyz")
    async def ready() -> Response:
        return Response(b'{"status":"ready"}', media_type="application/json")

    @app.post("/ingest/{msn}")
    async def ingest(msn: str, request: Request) -> Response:
        body = await request.body()
        await request.app.state.pool.execute(
            "INSERT INTO bare_inbox (msn, body, received_at) VALUES ($1, $2, $3)",
            msn,
            body.decode(),
            datetime.now(UTC),
        )
        return Response(ACCEPTED, media_type="application/json")

    return app


def sqlalchemy_app(dsn: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_async_engine(
            dsn.replace("postgresql://", "postgresql+asyncpg://", 1), pool_size=10
        )
        async with engine.begin() as connection:
            await connection.exec_driver_sql(BARE_TABLE)
        app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/readyz")
    async def ready() -> Response:
        return Response(b'{"status":"ready"}', media_type="application/json")

    @app.post("/ingest/{msn}")
    async def ingest(msn: str, request: Request) -> Response:
        body = await request.body()
        async with request.app.state.sessions() as session, session.begin():
            session.add(BareInbox(msn=msn, body=body.decode(), received_at=datetime.now(UTC)))
        return Response(ACCEPTED, media_type="application/json")

    return app


def forwarder_app(sim_url: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(base_url=sim_url, timeout=10) as http:
            token = (
                await http.post(
                    "/accesstoken/get",
                    headers={
                        "client_id": "sim-partner-client-id",
                        "client_secret": "sim-partner-client-secret",
                        "Ocp-Apim-Subscription-Key": "sim-partner-subscription-key",
                    },
                )
            ).json()["access_token"]
            app.state.http = http
            app.state.headers = {
                "Authorization": f"Bearer {token}",
                "Ocp-Apim-Subscription-Key": "sim-partner-subscription-key",
                "Merchant-Serial-Number": FORWARD_MSN,
                "Content-Type": "application/json",
            }
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/readyz")
    async def ready() -> Response:
        return Response(b'{"status":"ready"}', media_type="application/json")

    @app.post("/hook")
    async def hook(request: Request) -> Response:
        event = orjson.loads(await request.body())
        reference = forward_reference(event["merchantQrId"])
        payment = {
            "amount": {"currency": "DKK", "value": 1000},
            "paymentMethod": {"type": "WALLET"},
            "customer": {"customerToken": event["customerToken"]},
            "customerInteraction": "CUSTOMER_PRESENT",
            "userFlow": "PUSH_MESSAGE",
            "reference": reference,
            "paymentDescription": "Forwarded",
        }
        headers = {**request.app.state.headers, "Idempotency-Key": str(uuid.uuid4())}
        await request.app.state.http.post(
            "/epayment/v1/payments", content=orjson.dumps(payment), headers=headers
        )
        return Response(ACCEPTED, media_type="application/json")

    return app


FORWARD_PREFIX = "fwd-"


def forward_reference(merchant_qr_id: str) -> str:
    return FORWARD_PREFIX + merchant_qr_id


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.baselines")
    parser.add_argument("kind", choices=["asyncpg", "sqlalchemy", "forwarder"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn", default="")
    parser.add_argument("--sim-url", default="")
    args = parser.parse_args(argv)
    if args.kind == "asyncpg":
        app = asyncpg_app(args.dsn)
    elif args.kind == "sqlalchemy":
        app = sqlalchemy_app(args.dsn)
    else:
        app = forwarder_app(args.sim_url)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
