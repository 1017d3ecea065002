"""Shared fixtures: real Postgres (a fresh database per session), SQLite per test, settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.databases import (
    create_postgres_database,
    drop_postgres_database,
    migrate,
    truncate_all,
)


@pytest.fixture(scope="session")
async def postgres_url() -> AsyncIterator[str]:
    url = await create_postgres_database()
    await migrate(url)
    try:
        yield url
    finally:
        await drop_postgres_database(url)


@pytest.fixture
async def pg_url(postgres_url: str) -> AsyncIterator[str]:
    """The session's Postgres database, emptied after the test."""
    try:
        yield postgres_url
    finally:
        await truncate_all(postgres_url)


@pytest.fixture
async def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'vipps-pos.db'}"
    await migrate(url)
    return url


@pytest.fixture(params=["postgres", "sqlite"])
async def database_url(
    request: pytest.FixtureRequest, postgres_url: str, tmp_path: Path
) -> AsyncIterator[str]:
    """Both backends: persistence behaviour must hold on the embedded default too."""
    if request.param == "postgres":
        try:
            yield postgres_url
        finally:
            await truncate_all(postgres_url)
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'vipps-pos.db'}"
        await migrate(url)
        yield url
