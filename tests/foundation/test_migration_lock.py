"""Replicas that start together migrate once: on Postgres the upgrade runs under an advisory
lock, so the second process waits and then finds the schema at head."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from app.migrations import MIGRATION_LOCK_KEY, head
from tests.support.databases import create_postgres_database, drop_postgres_database

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    url = await create_postgres_database("vipps_pos_lock")
    try:
        yield url
    finally:
        await drop_postgres_database(url)


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _waiting(connection: asyncpg.Connection) -> int:
    count: int = await connection.fetchval(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()"
    )
    return count


async def test_two_processes_starting_at_once_migrate_once(empty_database: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIPPS_POS_")}
    env.update({"VIPPS_POS_ENVIRONMENT": "test", "VIPPS_POS_DATABASE__URL": empty_database})
    holder = await asyncpg.connect(_dsn(empty_database))
    try:
        # Hold the lock so both processes are surely inside their upgrade at the same time.
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        processes = [
            subprocess.Popen(  # noqa: ASYNC220 (waiting happens in the loop below)
                [sys.executable, "-m", "app.cli", "migrate"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for _ in range(2)
        ]
        deadline = time.monotonic() + 60
        while await _waiting(holder) < 2:
            assert all(p.poll() is None for p in processes), "a process did not wait"
            assert time.monotonic() < deadline, "the processes never queued on the lock"
            await asyncio.sleep(0.05)
        assert await holder.fetchval("SELECT to_regclass('public.tills') IS NULL")
        await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        outputs = [p.communicate(timeout=120)[0].decode() for p in processes]
        assert [p.returncode for p in processes] == [0, 0], outputs
        version = await holder.fetchval("SELECT version_num FROM alembic_version")
        assert version == head()
        assert await holder.fetchval("SELECT count(*) FROM alembic_version") == 1
    finally:
        await holder.close()
