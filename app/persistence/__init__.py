"""Persistence of the hot paths: plain records, one store per backend behind one protocol."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from app.persistence.counters import StatementCounter, count_engine
from app.persistence.store import CheckoutStore
from app.settings import DatabaseSettings


async def open_store(
    settings: DatabaseSettings,
    engine: AsyncEngine,
    counter: StatementCounter | None = None,
    *,
    origin: str = "-",
) -> CheckoutStore:
    """The store for the configured database: Postgres gets its own pool of raw asyncpg
    connections (closed by ``store.close()``); SQLite shares the application's engine.

    ``counter`` counts every statement of the service on Postgres (the hot paths' and the
    ORM's); on SQLite those of the hot paths only. ``origin`` names this process in the
    notifications its saves send (``ChangeHub.origin``)."""
    counter = counter or StatementCounter()
    if settings.is_postgres:
        from app.persistence.postgres import PostgresStore

        count_engine(engine, counter)  # the operator paths' ORM statements count too
        return await PostgresStore.open(
            settings.url, size=settings.hot_pool_size, counter=counter, origin=origin
        )
    from app.persistence.sqlite import SqliteStore

    return SqliteStore(engine, counter)
