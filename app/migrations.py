"""Run Alembic programmatically (``vipps-pos migrate``, ``serve``, tests).

Several replicas start together and each ``serve`` migrates first: on Postgres the upgrade runs
under a session advisory lock, so one replica migrates while the others wait and then find the
schema at head (a second concurrent upgrade would fail on tables that already exist). SQLite
serves one process and needs no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import structlog
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from alembic import command


def alembic_dir() -> Path:
    """``alembic/`` beside the working directory (the image's /app), else beside the source."""
    configured = os.environ.get("VIPPS_POS_ALEMBIC_DIR")
    for candidate in (
        Path(configured) if configured else None,
        Path.cwd() / "alembic",
        Path(__file__).resolve().parents[1] / "alembic",
    ):
        if candidate is not None and (candidate / "env.py").exists():
            return candidate
    raise FileNotFoundError("alembic/ not found; set VIPPS_POS_ALEMBIC_DIR")


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(alembic_dir()))
    config.attributes["database_url"] = database_url
    return config


log = structlog.get_logger("app.migrations")
# pg_advisory_lock key of "migrating vipps-pos" (any constant shared by every replica).
MIGRATION_LOCK_KEY = 0x76_69_70_70_73_70_6F_73  # b"vippspos"


@contextlib.asynccontextmanager
async def _migration_lock(database_url: str) -> AsyncIterator[None]:
    url = make_url(database_url).set(drivername="postgresql")
    connection = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_KEY):
            log.info("migrations.waiting", reason="another process is migrating")
            await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        yield
    finally:
        # Closing the session releases the lock too; unlocking first hands it over at once.
        with contextlib.suppress(Exception):
            await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        await connection.close()


async def _locked_upgrade(database_url: str, revision: str) -> None:
    async with _migration_lock(database_url):
        await asyncio.to_thread(command.upgrade, alembic_config(database_url), revision)


def upgrade(database_url: str, revision: str = "head") -> None:
    """Blocking: call from a thread when an event loop is running (env.py runs its own).

    On Postgres one process at a time migrates (see the module docstring)."""
    if make_url(database_url).get_backend_name() == "postgresql":
        asyncio.run(_locked_upgrade(database_url, revision))
    else:
        command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def head() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(alembic_dir()))
    return ScriptDirectory.from_config(config).get_current_head()
