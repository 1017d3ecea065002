"""What one database round trip costs the service's CPU, by access layer.

``python -m benchmarks.statement_cost [--dsn postgresql://postgres@127.0.0.1:5432/postgres] [-n N]``

Creates a scratch table in a fresh database, then measures ``time.process_time()`` per call
(CPU of this process, not wall time: a shared machine's load does not inflate it much) for the
same primary-key read and the same single-row update through:

* raw asyncpg on one connection (prepared once, asyncpg's statement cache);
* raw asyncpg through an ``asyncpg.Pool`` (acquire, statement, release);
* SQLAlchemy Core on an ``AsyncConnection`` (compiled-statement cache warm);
* the ORM (``AsyncSession.get`` / flush), as the service used before.

Prints one line per layer with µs of CPU per call. The result decided which layer the hot paths
use (benchmarks/README.md, "Statement cost").
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from collections.abc import Awaitable, Callable

import asyncpg
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, select, update
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped

ROWS = 1000
metadata = MetaData()
scratch = Table(
    "scratch_cost",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("state", String(24)),
    Column("version", Integer),
)


class _Base(DeclarativeBase):
    metadata = metadata


class Scratch(_Base):
    __table__ = scratch
    id: Mapped[int]
    state: Mapped[str]
    version: Mapped[int]


async def _cpu_per_call(label: str, n: int, call: Callable[[int], Awaitable[object]]) -> float:
    for i in range(min(200, n)):  # warm caches (prepared statements, compiled SQL)
        await call(i)
    started = time.process_time()
    for i in range(n):
        await call(i)
    per_call = (time.process_time() - started) / n * 1e6
    sys.stdout.write(f"{label:<44} {per_call:8.1f} µs CPU per call\n")
    return per_call


async def measure(server_dsn: str, n: int) -> dict[str, float]:
    name = f"vipps_pos_cost_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    dsn = server_dsn.rsplit("/", 1)[0] + f"/{name}"
    results: dict[str, float] = {}
    try:
        conn = await asyncpg.connect(dsn)
        await conn.execute(
            "CREATE TABLE scratch_cost (id BIGINT PRIMARY KEY, state VARCHAR(24), version INT)"
        )
        await conn.executemany(
            "INSERT INTO scratch_cost VALUES ($1, 'AWAITING_SCAN', 1)",
            [(i,) for i in range(ROWS)],
        )
        read = "SELECT id, state, version FROM scratch_cost WHERE id = $1"
        write = "UPDATE scratch_cost SET version = version + 1 WHERE id = $1"
        results["asyncpg read"] = await _cpu_per_call(
            "raw asyncpg: read by primary key", n, lambda i: conn.fetchrow(read, i % ROWS)
        )
        results["asyncpg write"] = await _cpu_per_call(
            "raw asyncpg: update one row (autocommit)", n, lambda i: conn.execute(write, i % ROWS)
        )

        async def in_transaction(i: int) -> None:
            async with conn.transaction():
                await conn.execute(write, i % ROWS)

        results["asyncpg begin/write/commit"] = await _cpu_per_call(
            "raw asyncpg: BEGIN + update + COMMIT", n, in_transaction
        )
        await conn.close()

        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)

        async def pooled(i: int) -> None:
            async with pool.acquire() as pooled_conn:
                await pooled_conn.fetchrow(read, i % ROWS)

        results["asyncpg pool read"] = await _cpu_per_call(
            "raw asyncpg pool: acquire + read + release", n, pooled
        )
        await pool.close()

        engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://"))
        async with engine.connect() as sa_conn:
            core_read = select(scratch).where(scratch.c.id == 0)

            async def core(i: int) -> None:
                (await sa_conn.execute(core_read, {"id_1": i % ROWS})).first()

            results["core read"] = await _cpu_per_call(
                "SQLAlchemy Core on AsyncConnection: read", n, core
            )
            core_write = update(scratch).where(scratch.c.id == 0).values(version=scratch.c.version)

            async def core_update(i: int) -> None:
                await sa_conn.execute(core_write, {"id_1": i % ROWS})

            results["core write"] = await _cpu_per_call(
                "SQLAlchemy Core on AsyncConnection: update", n, core_update
            )
            await sa_conn.commit()

        async def orm(i: int) -> None:
            async with AsyncSession(engine, expire_on_commit=False) as session:
                await session.get(Scratch, i % ROWS)

        results["orm read"] = await _cpu_per_call("ORM: session, get by primary key, close", n, orm)

        async def orm_write(i: int) -> None:
            async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
                row = await session.get(Scratch, i % ROWS)
                assert row is not None
                row.version += 1

        results["orm write"] = await _cpu_per_call(
            "ORM: session, get, change, commit", n, orm_write
        )
        await engine.dispose()
    finally:
        admin = await asyncpg.connect(server_dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("-n", type=int, default=2000)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # the service runs on uvloop when it is installed
        pass
    asyncio.run(measure(args.dsn, args.n))


if __name__ == "__main__":
    main()
