"""Migrations run on both backends, round-trip, and agree with the models."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from app.db import Base, create_engine
from app.migrations import downgrade, head, upgrade
from app.models import ACTIVE_CHECKOUT_STATES
from app.settings import DatabaseSettings
from tests.support.databases import create_postgres_database, drop_postgres_database


async def _diff(url: str) -> list[object]:
    engine = create_engine(DatabaseSettings(url=url))
    try:
        async with engine.connect() as conn:

            def compare(sync_conn: object) -> list[object]:
                context = MigrationContext.configure(
                    sync_conn,  # type: ignore[arg-type]
                    opts={"compare_type": True, "render_as_batch": True},
                )
                return list(compare_metadata(context, Base.metadata))

            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


async def _tables(url: str) -> set[str]:
    engine = create_engine(DatabaseSettings(url=url))
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def _round_trip_and_compare(url: str) -> None:
    await asyncio.to_thread(upgrade, url)
    assert "checkouts" in await _tables(url)
    await asyncio.to_thread(downgrade, url, "base")
    assert await _tables(url) <= {"alembic_version"}
    await asyncio.to_thread(upgrade, url)
    assert await _diff(url) == [], "models and migrations disagree"
    engine = create_engine(DatabaseSettings(url=url))
    try:
        async with engine.connect() as conn:
            version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
    finally:
        await engine.dispose()
    assert version == head()


async def test_postgres_round_trip_and_models_agree() -> None:
    url = await create_postgres_database("vipps_pos_migrations")
    try:
        await _round_trip_and_compare(url)
    finally:
        await drop_postgres_database(url)


async def test_sqlite_round_trip_and_models_agree(tmp_path: object) -> None:
    await _round_trip_and_compare(f"sqlite+aiosqlite:///{tmp_path}/m.db")


def test_active_states_in_the_index_match_the_domain() -> None:
    from app.domain.state_machine import ACTIVE_STATES

    assert set(ACTIVE_CHECKOUT_STATES) == {s.value for s in ACTIVE_STATES}
