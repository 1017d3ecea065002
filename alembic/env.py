"""Alembic environment: async engine, URL from the service settings, or `-x url=...`."""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import Connection

import app.models  # noqa: F401  (registers the tables on Base.metadata)
from alembic import context
from app.db import Base, create_engine
from app.settings import DatabaseSettings, Settings

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    explicit = context.get_x_argument(as_dictionary=True).get("url")
    configured = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    return explicit or configured or Settings().database.url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_migrations_offline() -> None:
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_sync(connection)
        return
    engine = create_engine(DatabaseSettings(url=_database_url()))
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run_sync)
            await conn.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
