"""Engine and session factories; the declarative base with a naming convention.

Invariants:
* One transaction per unit of work: callers use :func:`transaction`; services flush, never commit.
* ``expire_on_commit=False`` so objects stay readable after the commit that published them.
* SQLite (the embedded default) runs with WAL and ``BEGIN IMMEDIATE`` so that concurrent writers
  queue on the database lock instead of failing with "database is locked" half-way through a unit
  of work. It serves one process only; several replicas need Postgres.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Dialect, MetaData, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from app.settings import DatabaseSettings

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on both backends (SQLite hands back naive datetimes otherwise).

    Invariant: only aware datetimes go in; everything comes out aware, in UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    url = make_url(settings.url)
    if url.get_backend_name() == "sqlite":
        database = url.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url, echo=settings.echo, connect_args={"timeout": 30, "isolation_level": None}
        )
        _tune_sqlite(engine)
        return engine
    kwargs: dict[str, Any] = {
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        # No pre-ping: it cost a round trip (BEGIN; SELECT; ROLLBACK on asyncpg) on every checkout
        # from the pool, ~7-9 % of the service's CPU under load (benchmarks/README.md). A
        # connection that died since (database restart) fails its first statement with a
        # disconnect error; SQLAlchemy then invalidates the whole pool, so only that one unit of
        # work fails (a webhook answered 5xx is retried by Vipps) and the next gets a fresh
        # connection. (The intake's raw inbox insert, which SQLAlchemy does not see, discards
        # only its own dead connection: each stale pooled connection fails at most one webhook.)
        # pool_recycle retires connections before server or proxy idle timeouts.
        "pool_pre_ping": False,
        "pool_recycle": 1800,
    }
    return create_async_engine(url, echo=settings.echo, **kwargs)


def _tune_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # pysqlite's own transaction handling is off (isolation_level=None); take the write lock
        # up front so read-then-write units of work never deadlock on lock upgrade.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def transaction(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit on success, roll back on any exception."""
    async with factory() as session, session.begin():
        yield session
