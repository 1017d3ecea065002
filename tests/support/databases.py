"""Test databases: a fresh Postgres database per test session, a fresh SQLite file per test.

The Postgres server defaults to 127.0.0.1:5432 (user ``postgres``, trust auth) and can be moved
with ``VIPPS_POS_TEST_PG`` (an SQLAlchemy URL without a database name). Every run creates its
own uniquely named database and drops it at the end: nothing depends on leftovers.
"""

from __future__ import annotations

import asyncio
import os
import secrets

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.db import Base, create_engine
from app.migrations import upgrade
from app.settings import DatabaseSettings

SERVER = os.environ.get("VIPPS_POS_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432")


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def create_postgres_database(prefix: str = "vipps_pos_test") -> str:
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    server = make_url(SERVER)
    admin = await asyncpg.connect(_dsn(str(server.set(database="postgres"))))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return server.set(database=name).render_as_string(hide_password=False)


async def drop_postgres_database(url: str) -> None:
    name = make_url(url).database
    admin = await asyncpg.connect(_dsn(str(make_url(url).set(database="postgres"))))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def migrate(url: str) -> None:
    await asyncio.to_thread(upgrade, url)


async def truncate_all(url: str) -> None:
    """Empty every table (between tests); keeps the schema and alembic_version."""
    engine = create_engine(DatabaseSettings(url=url))
    try:
        async with engine.begin() as conn:
            tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
            if engine.dialect.name == "postgresql":
                await conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
            else:
                for table in tables:
                    await conn.execute(text(f"DELETE FROM {table}"))
    finally:
        await engine.dispose()
